"""The provider's batch queue as one organisation shares it: every run on the same account and
model forms its batches within what the account's queue limit (`batchpilot limits`) leaves after
every other run's queued batches. The store keeps the limit locked while a batch is formed (see
`Store.queue_left`), so that the runs of every worker together stay under it."""

from __future__ import annotations

from batchpilot.store import Store

__all__ = ["hold", "shared_full", "shared_room"]


def shared_room(store: Store, account: str | None, model: str, room: int | None) -> int | None:
    """`room` (the run's own queue room; None: no limit) within what the account's shared limit
    leaves too; called inside the transaction that forms the batch."""
    left = None if account is None else store.queue_left(account, model)
    if left is None:
        return room
    return left if room is None else min(room, left)


def shared_full(store: Store, account: str | None, model: str, tokens: int) -> bool:
    """Whether the account's shared queue is too full now for a request of `tokens` that fits
    its limit: other runs' batches hold the queue, so the run waits for them to leave it."""
    if account is None:
        return False
    limit = next((x for x in store.limits() if (x.account, x.model) == (account, model)), None)
    if limit is None or limit.queue_tokens is None or tokens > limit.queue_tokens:
        return False
    return limit.queue_tokens - limit.queued_tokens < tokens


def hold(
    store: Store, account: str | None, model: str, run_id: str, batch_id: int, tokens: int
) -> None:
    """The new batch's tokens count against the account's queue while it is queued or live."""
    if account is not None:
        store.hold_queue(account, model, run_id, batch_id, tokens)
