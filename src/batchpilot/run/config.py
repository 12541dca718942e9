"""What one run is driven by, fixed before its loop starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpilot.run.settings import RunSettings
from batchpilot.run.status import RunStatus
from batchpilot.run.target import TargetCounter
from batchpilot.store import PendingRequest

__all__ = ["AnswerCheck", "RunConfig"]

AnswerCheck = Callable[[PendingRequest, dict[str, Any]], str | None]
"""The run's checks on one answer: None when it passes, else why it does not."""


@dataclass(frozen=True)
class RunConfig:
    """One run's configuration: its limits, where its batch files go, how answers are checked
    and whether the cross-run cache may answer; built once, read by every part of the run.

    `target` (target mode) counts valid answers: once it is met, nothing more is sent and live
    batches are cancelled. `on_progress` is given the run's status after every round, within a
    round before an upload or a collection and once a batch is submitted, and at the end.

    `account` names the provider account whose shared limits (`Store.queue_left`, `take_rate`)
    the run reserves from; `fence` raises when the run's lease may have run out (a worker on a
    shared store), and is called before every remote side effect and once a round. `worker` is
    the id of that lease's worker: the run may have co-drivers, so the batches and real-time
    requests it takes are recorded as its own, its money is checked against what every worker
    holds in the store, and it takes over only what a worker whose lease ran out left."""

    run_id: str
    settings: RunSettings
    files_dir: Path
    use_cache: bool = True
    check: AnswerCheck | None = None
    target: TargetCounter | None = None
    on_progress: Callable[[RunStatus], None] | None = None
    account: str | None = None
    fence: Callable[[], None] | None = None
    worker: str | None = None
