"""A run's progress as people see it while it goes.

On a terminal: a progress bar (the phase, requests done with those answered inside live
batches, the rate, the time left and the money spent) above the run's status table, and its
batches on request, redrawn in place. Elsewhere (a log, CI): one line per change (see
`run/changes.py`). `batchpilot run` and `resume` show it, and so do `run_job`, `resume`,
`map` and tasks from Python, where it is on by default only when stderr is a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from batchpilot.formatting import duration, usd
from batchpilot.run.changes import changes
from batchpilot.run.status import RunStatus
from batchpilot.run.tables import batch_table, status_table

__all__ = ["RunProgress", "shown_progress"]

OnProgress = Callable[[RunStatus], None]


class RunProgress:
    """Shows a run's progress on `console` from each status it is given (`update`); `quiet`
    shows nothing, `batches` adds the table of batches on a terminal."""

    def __init__(
        self, console: Console | None = None, *, quiet: bool = False, batches: bool = False
    ) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.batches = batches
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[spend]}"),
            console=self.console,
            auto_refresh=False,
        )
        self._task: TaskID = self._bar.add_task("planning", total=None, rate="", eta="", spend="")
        self._live: Live | None = None
        self._last: RunStatus | None = None
        self._first: tuple[float, int] | None = None  # (when, requests done) at the first look
        self._now: Callable[[], float] = time.monotonic

    def __enter__(self) -> RunProgress:
        if self.quiet:
            return self
        if self.console.is_terminal:
            self._live = Live(
                console=self.console,
                get_renderable=self._render,
                refresh_per_second=4,
                transient=False,
            )
            self._live.__enter__()
        else:
            self._print("planning")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(kind, error, tb)
            self._live = None

    # what is shown --------------------------------------------------------------------------

    def update(self, status: RunStatus) -> None:
        """Take the run's latest status: redraw the panel, or print what changed."""
        if self.quiet:
            return
        before, self._last = self._last, status
        if before is None or before.run_id != status.run_id:
            self._first = None  # a pipeline's next step: its own rate and time left
        done = status.done + status.in_batches_done
        now = self._now()
        if self._first is None:
            self._first = (now, done)
        self._bar.update(
            self._task,
            description=status.phase,
            total=status.total or None,
            completed=done,
            rate=self._rate(now, done),
            eta=self._eta(now, done, status.total),
            spend=self._spend(status),
        )
        if self._live is not None:
            self._live.refresh()
            return
        for line in changes(before, status):
            self._print(line)

    def _render(self) -> RenderableType:
        parts: list[RenderableType] = [self._bar.get_renderable()]
        status = self._last
        if status is not None:
            parts.append(status_table(status))
            if self.batches and status.batch_records:
                parts.append(batch_table(status.batch_records))
        return Group(*parts)

    def _print(self, line: str) -> None:
        self.console.print(
            f"{time.strftime('%H:%M:%S')} {line}", highlight=False, markup=False, soft_wrap=True
        )

    # rate, time left, money -----------------------------------------------------------------

    def _per_second(self, now: float, done: int) -> float | None:
        assert self._first is not None
        since, first = self._first
        if now - since < 1 or done <= first:
            return None
        return (done - first) / (now - since)

    def _rate(self, now: float, done: int) -> str:
        rate = self._per_second(now, done)
        if rate is None:
            return ""
        return f"{rate:,.1f}/s" if rate >= 1 else f"{rate * 60:,.1f}/min"

    def _eta(self, now: float, done: int, total: int) -> str:
        rate = self._per_second(now, done)
        if rate is None or done >= total:
            return ""
        return f"ETA {duration((total - done) / rate)}"

    def _spend(self, status: RunStatus) -> str:
        if status.budget_usd is None:
            return f"{usd(status.spent_usd)} spent"
        return f"{usd(status.spent_usd)} of {usd(status.budget_usd)}"


def progress_wanted(progress: bool | None) -> bool:
    """`progress` as given, else whether stderr is a terminal."""
    return Console(stderr=True).is_terminal if progress is None else progress


@contextmanager
def shown_progress(
    progress: bool | None, on_progress: OnProgress | None
) -> Iterator[OnProgress | None]:
    """The progress callback for a run from Python: the run's progress shown on stderr (when
    `progress`, or when it is None and stderr is a terminal), then `on_progress`."""
    if not progress_wanted(progress):
        yield on_progress
        return
    with RunProgress() as view:

        def both(status: RunStatus) -> None:
            view.update(status)
            if on_progress is not None:
                on_progress(status)

        yield both
