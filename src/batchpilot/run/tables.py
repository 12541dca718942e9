"""A run for people, as tables: its progress (`status_table`) and its batches (`batch_table`),
shown by `batchpilot status` and by the live view of a run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from rich.table import Table

from batchpilot.formatting import duration, usd
from batchpilot.run.status import RunStatus
from batchpilot.store import BatchRecord

__all__ = ["SHOWN", "batch_table", "status_table"]

SHOWN = 20
"""Batches a table shows: the live ones first, then the latest that ended."""


def status_table(status: RunStatus, eta: str | None = None) -> Table:
    """The run's requests, batches, tokens and money, what it waits for and when it may end."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    r = status.requests
    table.add_row("run", f"{status.run_id} ({status.status})")
    if status.status == "running":
        table.add_row("phase", status.phase)
    in_batches = f"{r.get('submitted', 0):,} in batches"
    if status.in_batches_done:
        in_batches += f" ({status.in_batches_done:,} of them answered there, not collected yet)"
    table.add_row(
        "requests",
        f"{status.done:,}/{status.total:,} done: {r.get('succeeded', 0):,} succeeded, "
        f"{r.get('failed', 0):,} failed, {r.get('pending', 0) + r.get('queued', 0):,} waiting, "
        + in_batches,
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


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def batch_table(batches: Sequence[BatchRecord], now: datetime | None = None) -> Table:
    """The live batches and the latest ended ones (at most `SHOWN`); the title says how many
    more there are."""
    now = now or datetime.now(UTC)
    ended = [b for b in batches if b.finished_at_utc is not None or b.state == "abandoned"]
    live = [b for b in batches if b not in ended]
    shown = sorted([*live, *ended[::-1]][:SHOWN], key=lambda b: b.id)
    more = len(batches) - len(shown)
    title = f"batches ({more} more ended earlier; --json lists all)" if more else "batches"
    table = Table("batch", "state", "remote", "done", "failed", "age", "remote id", title=title)
    for batch in shown:
        if batch.finished_at_utc is not None:
            age = "took " + duration(
                (_utc(batch.finished_at_utc) - _utc(batch.created_at_utc)).total_seconds()
            )
        else:
            age = duration((now - _utc(batch.created_at_utc)).total_seconds())
        table.add_row(
            str(batch.id),
            batch.state,
            batch.remote_status or "-",
            f"{batch.completed + batch.failed:,}/{batch.requests:,}",
            f"{batch.failed:,}",
            age,
            batch.remote_id or "-",
        )
    return table
