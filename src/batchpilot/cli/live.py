"""The live view of a run: requests, batches, tokens, money, ETA."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from batchpilot.formatting import duration, usd
from batchpilot.run import RunStatus

__all__ = ["LiveView", "status_table"]


def status_table(status: RunStatus, eta: str | None = None) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    r = status.requests
    table.add_row("run", f"{status.run_id} ({status.status})")
    table.add_row(
        "requests",
        f"{status.done:,}/{status.total:,} done: {r.get('succeeded', 0):,} succeeded, "
        f"{r.get('failed', 0):,} failed, {r.get('pending', 0) + r.get('queued', 0):,} waiting, "
        f"{r.get('submitted', 0):,} in batches",
    )
    if r.get("cancelled"):
        table.add_row("not needed", f"{r['cancelled']:,} requests cancelled before sending")
    if status.target is not None:
        table.add_row("target", f"{status.valid or 0:,} of {status.target:,} valid")
    batches = ", ".join(f"{n} {state}" for state, n in sorted(status.batches.items())) or "none"
    table.add_row("batches", batches)
    if status.remote:
        table.add_row("remote", ", ".join(f"{n} {s}" for s, n in sorted(status.remote.items())))
    table.add_row("tokens", f"{status.input_tokens:,} in, {status.output_tokens:,} out")
    budget = f" of {usd(status.budget_usd)} budget" if status.budget_usd is not None else ""
    held = f" (+{usd(status.reserved_usd)} reserved)" if status.reserved_usd else ""
    table.add_row("cost", f"{usd(status.spent_usd)}{held}{budget}")
    if status.failures:
        table.add_row(
            "failed tries",
            ", ".join(f"{n} {kind}" for kind, n in sorted(status.failures.items())),
        )
    for line in status.waiting:
        table.add_row("waiting", line)
    if eta:
        table.add_row("eta", eta)
    return table


class LiveView:
    """Redraws the status in place on a terminal; prints a line now and then elsewhere."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._live: Live | None = None
        self._started = time.monotonic()
        self._first_done: int | None = None
        self._last_line = 0.0

    def __enter__(self) -> LiveView:
        if not self.quiet and self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(kind, error, tb)

    def _eta(self, status: RunStatus) -> str | None:
        if self._first_done is None:
            self._first_done = status.done
        done_here = status.done - self._first_done
        left = status.total - status.done
        elapsed = time.monotonic() - self._started
        if done_here <= 0 or left <= 0 or elapsed < 1:
            return None
        return f"about {duration(left * elapsed / done_here)}"

    def update(self, status: RunStatus) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(Group(status_table(status, self._eta(status))))
            return
        now = time.monotonic()
        if now - self._last_line >= 5 or status.finished:
            self._last_line = now
            self.console.print(
                f"{status.done}/{status.total} done, {status.requests.get('failed', 0)} failed, "
                f"{usd(status.spent_usd)} spent"
            )
