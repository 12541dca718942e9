"""How far an export has gone, for whoever shows it: a callback told the rows read so far
and the rows in all, at the start, every `STEP` rows and at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["STEP", "ExportProgress", "counted"]

ExportProgress = Callable[[int, int], None]
"""Called with (rows read so far, rows in all)."""

STEP = 10_000

T = TypeVar("T")


def counted(rows: Iterable[T], total: int, progress: ExportProgress) -> Iterator[T]:
    """`rows` as they are, `progress` told how many have gone by."""
    progress(0, total)
    done = 0
    step = STEP
    for row in rows:
        yield row
        done += 1
        if done % step == 0:
            progress(done, total)
    progress(done, total)
