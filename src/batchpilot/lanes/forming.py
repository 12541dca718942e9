"""What the batch lane reads to form a batch: the pending requests from the front of the input,
page by page as the packer asks for them, so that forming a batch reads about as many requests
as the batch holds, never the whole queue of pending ones; and a formed batch's file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from batchpilot.plan.ids import request_line
from batchpilot.store import BatchRecord, PendingRequest, Store

__all__ = ["FIRST_PAGE", "LAST_PAGE", "owned", "pending_pages", "write_batch_file"]

FIRST_PAGE = 256
LAST_PAGE = 4096


def pending_pages(store: Store, run_id: str, limit: int) -> Iterator[PendingRequest]:
    """At most `limit` pending requests in input order, read in pages that double in size (from
    `FIRST_PAGE` to `LAST_PAGE`) as they are consumed; their bodies are not read, only their
    lengths."""
    after: int | None = None
    page = FIRST_PAGE
    while limit > 0:
        wanted = min(page, limit)
        found = store.pending(run_id, wanted, after_row=after, bodies=False)
        yield from found
        if len(found) < wanted:
            return
        limit -= len(found)
        after = found[-1].first_row
        page = min(page * 2, LAST_PAGE)


def write_batch_file(store: Store, batch: BatchRecord, path: Path) -> Path:
    """The batch's requests as the lines of its file at `path` (written whole, then renamed)."""
    tmp = path.with_suffix(".part")
    with tmp.open("wb") as handle:
        for request in store.batch_requests(batch.run_id, batch.id):
            handle.write(request_line(request.id, request.endpoint, request.body))
            handle.write(b"\n")
    tmp.replace(path)
    return path


def owned(batches: list[BatchRecord], worker: str | None) -> list[BatchRecord]:
    """The batches `worker` drives: all of them for a run without co-drivers (no worker)."""
    return batches if worker is None else [b for b in batches if b.worker_id == worker]
