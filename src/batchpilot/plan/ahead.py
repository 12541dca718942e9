"""Counting tokens ahead of the planner, on a second thread.

tiktoken lets go of the GIL while it counts, so one worker thread counts the bodies of a chunk
of rows while the planner reads, renders and hashes the next chunk and packs the one before
(hashlib lets go of the GIL too, which gives the worker its turns). Every body is counted,
duplicates included; a count that fails keeps its error, which the planner raises only where
it uses that count, as it would have counted it itself.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchpilot.store.seen import SeenKeys
from batchpilot.tokens import TokenCount, count_request

if TYPE_CHECKING:
    from batchpilot.plan.planner import Item

__all__ = ["CHUNK", "Prepared", "count", "look_up", "read_ahead"]

CHUNK = 128
"""Rows per chunk: two chunks are in flight at most, so memory stays flat."""


@dataclass(slots=True)
class Prepared:
    """One item made ready to plan: its body as it will be sent (fitted to a reasoning model),
    its canonical bytes and hash, what is wrong with it, and, once counted, its tokens."""

    item: Item
    body: dict[str, Any] | None = None
    canonical: bytes = b""
    problem: str | None = None
    notes: tuple[str, ...] = ()
    content_hash: str = ""
    counted: TokenCount | Exception | None = None
    first_row: bool | None = None
    """Whether the row's id is new, once the ids of its chunk are looked up together."""
    new_request: bool | None = None
    """Whether the request's id is new, likewise."""

    def ready(self) -> bool:
        """Whether the body can be counted (it has no problem)."""
        return self.body is not None and self.problem is None

    def tokens(self) -> TokenCount:
        """The body's count, counted now unless the worker counted it."""
        counted = self.counted
        if counted is None:
            assert self.body is not None
            counted = self.counted = count_request(self.body, self.item.endpoint)
        if isinstance(counted, Exception):
            raise counted
        return counted


def count(prepared: Prepared) -> None:
    """Count a ready row's body, keeping the error of a count that fails."""
    if not prepared.ready():
        return
    try:
        assert prepared.body is not None
        prepared.counted = count_request(prepared.body, prepared.item.endpoint)
    except Exception as exc:  # raised where the planner uses the count
        prepared.counted = exc


class _Chunk:
    """Rows counted by whichever thread claims each first: the worker, and the planner itself
    once it needs the chunk (so neither waits while the other counts)."""

    __slots__ = ("claims", "rows")

    def __init__(self, rows: list[Prepared]) -> None:
        self.rows = rows
        self.claims = itertools.count()  # next() is atomic: each row is claimed once

    def work(self) -> None:
        rows = self.rows
        for index in self.claims:
            if index >= len(rows):
                return
            count(rows[index])


def read_ahead(
    items: Iterable[Item],
    prepare: Callable[[Item], Prepared],
    settle: Callable[[list[Prepared]], None],
) -> Iterator[Prepared]:
    """`items` prepared in the calling thread and counted in a worker thread a chunk ahead of
    the caller, in input order; `settle` sees each chunk once it is counted, before its rows
    are yielded."""
    pending: deque[tuple[_Chunk, Future[None]]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="batchpilot-count") as worker:
        rows: list[Prepared] = []
        for item in items:
            rows.append(prepare(item))
            if len(rows) < CHUNK:
                continue
            chunk = _Chunk(rows)
            pending.append((chunk, worker.submit(chunk.work)))
            rows = []
            if len(pending) > 1:
                yield from _done(*pending.popleft(), settle)
        while pending:
            yield from _done(*pending.popleft(), settle)
    _Chunk(rows).work()
    settle(rows)
    yield from rows


def look_up(seen: SeenKeys, rows: list[Prepared]) -> None:
    """Whether each row's id and request id are new, in two lookups for the chunk."""
    for prepared, first in zip(
        rows, seen.firsts("rows", [p.item.row_id for p in rows]), strict=True
    ):
        prepared.first_row = first
    ready = [prepared for prepared in rows if prepared.ready()]
    ids = [prepared.item.custom_id or prepared.content_hash for prepared in ready]
    for prepared, new in zip(ready, seen.firsts("requests", ids), strict=True):
        prepared.new_request = new


def _done(
    chunk: _Chunk, future: Future[None], settle: Callable[[list[Prepared]], None]
) -> list[Prepared]:
    chunk.work()
    future.result()
    settle(chunk.rows)
    return chunk.rows
