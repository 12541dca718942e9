"""A run's progress, computed from the store alone."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from batchpilot.store import BatchRecord, BatchState, RunState, Store

__all__ = ["RunStatus", "run_status"]

_ENDED_REMOTELY = ("completed", "failed", "expired", "cancelled")
_SENDING = (BatchState.PLANNED, BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING)


@dataclass
class RunStatus:
    run_id: str
    status: str
    requests: dict[str, int]
    batches: dict[str, int]
    remote: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    budget_usd: float | None = None
    failures: dict[str, int] = field(default_factory=dict)
    target: int | None = None
    """Target mode: how many valid answers (or items) the job needs, and how many exist."""
    valid: int | None = None
    waiting: list[str] = field(default_factory=list)
    """What the run waits for beyond batches at work: a batch the provider does not show yet,
    a submission being tried again."""
    in_batches_done: int = 0
    """Requests that live batches have answered or failed at the provider (its own counts),
    whose results are not collected yet: done remotely, not yet in `done`."""
    realtime_lane: bool = False
    """Whether this process's real-time lane is at work."""
    batch_records: list[BatchRecord] = field(default_factory=list, repr=False)
    """The run's batches as the store has them (not in `as_json`: `status --json` lists them)."""

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def done(self) -> int:
        ended = ("succeeded", "failed", "cancelled")
        return sum(self.requests.get(state, 0) for state in ended)

    @property
    def finished(self) -> bool:
        """Every request has ended (a run with no requests has nothing left to do)."""
        return self.done == self.total

    @property
    def phase(self) -> str:
        """What the run is doing now, in a word or two: of the stages under way, the first of
        collecting, in progress (a batch's or the real-time lane's), finalizing, validating,
        cancelling, uploading; else waiting (for queue room, money or a retry); or how the
        run ended."""
        if self.status != RunState.RUNNING:
            return self.status
        remote = self.remote
        if any(s in remote for s in _ENDED_REMOTELY):
            return "collecting"
        if "in_progress" in remote or self.realtime_lane or self.requests.get("realtime"):
            return "in progress"
        for status in ("finalizing", "validating", "cancelling"):
            if status in remote:
                return status
        if any(self.batches.get(state) for state in _SENDING):
            return "uploading"
        return "finishing" if self.finished else "waiting"

    def as_json(self) -> dict[str, Any]:
        data = {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self)
            if f.name != "batch_records"
        }
        data.update(total=self.total, done=self.done, finished=self.finished, phase=self.phase)
        return data


def run_status(store: Store, run_id: str, budget: float | None = None) -> RunStatus:
    run = store.run(run_id)
    batches: dict[str, int] = {}
    remote: dict[str, int] = {}
    waiting: list[str] = []
    answered = 0
    records = store.batches(run_id)
    for batch in records:
        batches[batch.state] = batches.get(batch.state, 0) + 1
        if batch.state == BatchState.SUBMITTED and batch.remote_status:
            remote[batch.remote_status] = remote.get(batch.remote_status, 0) + 1
        if batch.state == BatchState.SUBMITTED:
            answered += min(batch.completed + batch.failed, batch.requests)
        if batch.state == BatchState.SUBMITTED and batch.not_found:
            waiting.append(
                f"batch {batch.id} ({batch.remote_id}) answered 'not found' {batch.not_found} "
                "times in a row since it was created: polling until the provider shows it"
            )
        elif batch.state in (BatchState.UPLOADING, BatchState.CREATING):
            step = "upload of its file" if batch.state == BatchState.UPLOADING else "creation"
            waiting.append(f"batch {batch.id}: its {step} is under way or being tried again")
    spent, reserved = store.money(run_id)
    tokens_in, tokens_out = store.token_totals(run_id)
    return RunStatus(
        run_id=run_id,
        status=run.status if run else "unknown",
        requests=store.request_counts(run_id),
        batches=batches,
        remote=remote,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        spent_usd=spent,
        reserved_usd=reserved,
        budget_usd=budget if budget is not None else (run.budget_usd if run else None),
        failures=store.failure_reasons(run_id),
        waiting=waiting,
        in_batches_done=answered,
        batch_records=records,
    )
