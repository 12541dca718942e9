"""A run's batches as a table for people: state, age, requests done."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from rich.table import Table

from batchpilot.formatting import duration
from batchpilot.report.facts import parse_utc
from batchpilot.store import BatchRecord

__all__ = ["SHOWN", "batch_table"]

SHOWN = 20
"""Batches a table shows: the live ones first, then the latest that ended."""


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
                (parse_utc(batch.finished_at_utc) - parse_utc(batch.created_at_utc)).total_seconds()
            )
        else:
            age = duration((now - parse_utc(batch.created_at_utc)).total_seconds())
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
