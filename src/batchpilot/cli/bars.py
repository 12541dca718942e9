"""A bar on standard error counting rows as a command goes through them (planning, exporting)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["RowBar", "row_bar"]


class RowBar(Protocol):
    """Told how many rows are done, and the rows in all once they are known."""

    def __call__(self, done: int, total: int | None = None) -> None: ...


@contextmanager
def row_bar(
    label: str, quiet: bool, total: int | None = None, *, remaining: bool = False
) -> Iterator[RowBar | None]:
    """A transient bar (rows done of all, and the time spent, or with `remaining` the time
    left) while the block runs; nothing when `quiet`."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    clock = TimeRemainingColumn() if remaining else TimeElapsedColumn()
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), clock)
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)

        def update(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)

        yield update
