"""What the batch lane makes of a batch the provider failed as a whole: each request's outcome,
from the errors the provider gave (a line's own error fails that request; the others are tried
again), or, for a refusal over the enqueued-token limit, all back to pending, untried; and of a
batch the provider lost."""

from __future__ import annotations

from collections.abc import Callable

from batchpilot.providers.base import RemoteBatch
from batchpilot.run.ingest import RetryPolicy
from batchpilot.store import BatchRecord, Outcome, PendingRequest, RequestState, Store

__all__ = ["failed_batch_outcomes", "lose_batch"]


def failed_batch_outcomes(
    batch: BatchRecord,
    remote: RemoteBatch,
    requests: list[PendingRequest],
    retry: RetryPolicy,
    over_queue: Callable[[BatchRecord], None],
) -> list[Outcome]:
    """The outcomes of a failed batch; `over_queue` learns from a queue-limit refusal."""
    codes = {str(e.get("code")) for e in remote.errors}
    message = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in remote.errors[:3])
    if "token_limit_exceeded" in codes:
        over_queue(batch)
        return [
            Outcome(r.id, RequestState.PENDING, error=message, attempted=False) for r in requests
        ]
    by_line = {index + 1: request for index, request in enumerate(requests)}
    bad = {
        by_line[int(e["line"])].id: f"{e.get('code')}: {e.get('message')}"
        for e in remote.errors
        if isinstance(e.get("line"), int) and e["line"] in by_line
    }
    outcomes = []
    for request in requests:
        if request.id in bad:
            outcomes.append(Outcome(request.id, RequestState.FAILED, error=bad[request.id]))
        else:
            state = retry.next_state(request, True, True)
            outcomes.append(Outcome(request.id, state, error=f"batch failed: {message}"))
    return outcomes


def lose_batch(
    store: Store, run_id: str, batch: BatchRecord, misses: int, retry: RetryPolicy
) -> None:
    """A batch the provider does not know, does not list, and whose window has ended can bring
    nothing any more: its requests go back to pending (each try counted)."""
    requests = store.batch_requests(run_id, batch.id, bodies=False)
    why = f"lost: the provider no longer knows batch {batch.remote_id}"
    outcomes = [Outcome(r.id, retry.next_state(r, True, True), error=why) for r in requests]
    store.finish_batch(run_id, batch.id, outcomes)
    store.event(
        run_id,
        "lost",
        f"batch {batch.id} ({batch.remote_id}) is gone: 'not found' {misses} times, not in "
        "the provider's listing, and its completion window has ended; its requests are "
        "sent again",
    )
