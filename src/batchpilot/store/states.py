"""The state machines of requests, batches and runs: every state, and every move allowed from it."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar, cast

from batchpilot.errors import IllegalTransition

__all__ = [
    "BATCH_MOVES",
    "REQUEST_MOVES",
    "RUN_MOVES",
    "BatchState",
    "RequestState",
    "RunState",
    "check_move",
]


class RequestState(StrEnum):
    PENDING = "pending"  # planned; waiting for a lane to take it
    QUEUED = "queued"  # placed in a local batch that is not yet submitted
    SUBMITTED = "submitted"  # inside a remote batch
    REALTIME = "realtime"  # in flight on the real-time lane
    SUCCEEDED = "succeeded"  # answered (or taken from the result cache)
    FAILED = "failed"  # failed for good, with a reason
    CANCELLED = "cancelled"  # never sent: no longer needed (a target was met); may be revived


class BatchState(StrEnum):
    PLANNED = "planned"  # its requests are chosen; nothing sent yet
    UPLOADING = "uploading"  # intent: the input file is being uploaded
    UPLOADED = "uploaded"  # the provider holds the input file
    CREATING = "creating"  # intent: the remote batch is being created (budget reserved)
    SUBMITTED = "submitted"  # a remote batch exists; it is polled
    FINISHED = "finished"  # its results are ingested
    ABANDONED = "abandoned"  # never created remotely; its requests went back to pending


class RunState(StrEnum):
    PLANNED = "planned"  # planned; never run yet
    RUNNING = "running"  # a process drives it (or did, until it crashed or detached)
    STOPPED = "stopped"  # stopped before every request ended (Ctrl-C, budget, a refused key)
    FINISHED = "finished"  # every request has ended
    CANCELLED = "cancelled"  # its remote batches were cancelled on request


R, B, U = RequestState, BatchState, RunState

REQUEST_MOVES: dict[RequestState, frozenset[RequestState]] = {
    R.PENDING: frozenset({R.QUEUED, R.REALTIME, R.SUCCEEDED, R.FAILED, R.CANCELLED}),
    R.QUEUED: frozenset({R.SUBMITTED, R.PENDING}),
    R.SUBMITTED: frozenset({R.SUCCEEDED, R.FAILED, R.PENDING}),
    R.REALTIME: frozenset({R.SUCCEEDED, R.FAILED, R.PENDING}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset({R.PENDING}),
    R.CANCELLED: frozenset({R.PENDING}),
}

BATCH_MOVES: dict[BatchState, frozenset[BatchState]] = {
    B.PLANNED: frozenset({B.UPLOADING, B.ABANDONED}),
    B.UPLOADING: frozenset({B.UPLOADED, B.ABANDONED}),
    B.UPLOADED: frozenset({B.CREATING, B.ABANDONED}),
    B.CREATING: frozenset({B.SUBMITTED, B.UPLOADED, B.ABANDONED}),
    B.SUBMITTED: frozenset({B.FINISHED}),
    B.FINISHED: frozenset(),
    B.ABANDONED: frozenset(),
}

# Any run may be run again (a stopped one continues, a finished one takes new rows or a task's
# next round, a cancelled one is resumed); a run left running by a crash or a detach is taken up
# again by the next process, which holds the run's lock.
RUN_MOVES: dict[RunState, frozenset[RunState]] = {
    U.PLANNED: frozenset({U.RUNNING, U.CANCELLED}),
    U.RUNNING: frozenset({U.RUNNING, U.STOPPED, U.FINISHED, U.CANCELLED}),
    U.STOPPED: frozenset({U.RUNNING, U.CANCELLED}),
    U.FINISHED: frozenset({U.RUNNING, U.CANCELLED}),
    U.CANCELLED: frozenset({U.RUNNING, U.CANCELLED}),
}

S = TypeVar("S", bound=StrEnum)


def check_move(table: Mapping[S, frozenset[S]], current: str, target: str, what: str) -> None:
    """Raise IllegalTransition unless `current` → `target` is in the table."""
    allowed = table.get(cast(S, current), frozenset())
    if target not in allowed:
        raise IllegalTransition(f"{what}: cannot move from {current} to {target}")
