"""A run's progress, computed from the store alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from batchpilot.store import BatchState, Store

__all__ = ["RunStatus", "run_status"]


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

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(total=self.total, done=self.done, finished=self.finished)
        return data


def run_status(store: Store, run_id: str, budget: float | None = None) -> RunStatus:
    run = store.run(run_id)
    batches: dict[str, int] = {}
    remote: dict[str, int] = {}
    waiting: list[str] = []
    for batch in store.batches(run_id):
        batches[batch.state] = batches.get(batch.state, 0) + 1
        if batch.state == BatchState.SUBMITTED and batch.remote_status:
            remote[batch.remote_status] = remote.get(batch.remote_status, 0) + 1
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
    )
