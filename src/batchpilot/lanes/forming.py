"""What the batch lane reads to form a batch: the pending requests from the front of the input,
page by page as the packer asks for them, so that forming a batch reads about as many requests
as the batch holds, never the whole queue of pending ones."""

from __future__ import annotations

from collections.abc import Iterator

from batchpilot.store import PendingRequest, Store

__all__ = ["FIRST_PAGE", "LAST_PAGE", "pending_pages"]

FIRST_PAGE = 256
LAST_PAGE = 4096


def pending_pages(store: Store, run_id: str, limit: int) -> Iterator[PendingRequest]:
    """At most `limit` pending requests in input order, read in pages that double in size (from
    `FIRST_PAGE` to `LAST_PAGE`) as they are consumed."""
    after: int | None = None
    page = FIRST_PAGE
    while limit > 0:
        wanted = min(page, limit)
        found = store.pending(run_id, wanted, after_row=after)
        yield from found
        if len(found) < wanted:
            return
        limit -= len(found)
        after = found[-1].first_row
        page = min(page * 2, LAST_PAGE)
