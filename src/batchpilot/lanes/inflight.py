"""Requests cut off while they were on the real-time wire: each try may have run and been
billed, though no answer came back, so it is counted at its worst case."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchpilot.plan.worst import reservation
from batchpilot.pricing import PriceTable
from batchpilot.store import Outcome, PendingRequest, RequestState, Store

if TYPE_CHECKING:  # at run time the import would be circular: batchpilot.run imports lanes
    from batchpilot.run.ingest import RetryPolicy

__all__ = ["INTERRUPTED", "interrupted", "recover_inflight"]

INTERRUPTED = "interrupted while in flight"


def interrupted(request: PendingRequest, prices: PriceTable | None, retry: RetryPolicy) -> Outcome:
    """The outcome of a try cut off while it was on the wire: it may have run and been billed,
    so it is an attempt that cost the request's worst case; the request goes back to pending
    unless that was its last attempt."""
    worst = reservation(request, prices, batch=False)
    state = retry.next_state(request, True, True)
    reason = f"{INTERRUPTED}; it may have run, so it is counted at its worst case"
    if state == RequestState.FAILED:
        reason += f" (attempt {request.attempts + 1} of {retry.max_attempts})"
    return Outcome(request.id, state, cost_usd=worst, error=reason)


def recover_inflight(
    store: Store,
    run_id: str,
    prices: PriceTable | None,
    retry: RetryPolicy,
    worker: str | None = None,
) -> tuple[int, float]:
    """Record every request left in `realtime` (by a crash) as `interrupted`: back to pending,
    or failed after its last attempt. Returns how many there were and what they are counted at.
    With `worker` (a run with co-drivers), only those of workers whose lease ran out, in one
    transaction with the run locked, so that each is recovered by one worker once.

    A request that keeps getting interrupted so runs into the retry cap; one that goes back to
    pending may have reached the server, and sending it again may run it twice.
    """
    charged = 0.0
    with store.tx():
        if worker is None:
            requests = store.in_flight(run_id)
        else:
            store.lock_run(run_id)
            requests = store.orphans_in_flight(run_id, worker)
        for request in requests:
            outcome = interrupted(request, prices, retry)
            store.finish_realtime(run_id, outcome)
            charged += outcome.cost_usd
    return len(requests), charged
