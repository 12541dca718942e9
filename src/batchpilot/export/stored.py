"""A run's rows read from the store, in input order, joined with their results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchpilot.errors import StateError
from batchpilot.export.joined import Fallback, StoredRows
from batchpilot.export.progress import ExportProgress, counted
from batchpilot.export.write import write_export
from batchpilot.store import Store

__all__ = ["export_rows", "export_run"]


def export_rows(
    store: Store,
    run_id: str,
    fallback: Fallback | None = None,
    progress: ExportProgress | None = None,
) -> StoredRows:
    """Every row of a run, in input order, joined with its result; rows that finally failed
    get `fallback(input row)` as their answer when a fallback is given (status `fallback`).
    `progress` is told how many rows have been read."""
    joined = store.joined_rows(run_id)
    if progress is not None:
        joined = counted(joined, store.next_row_index(run_id), progress)
    return StoredRows(joined, fallback)


def export_run(
    store: Store,
    run_id: str,
    target: Path,
    *,
    format: str = "auto",
    progress: ExportProgress | None = None,
    **options: Any,
) -> int:
    """Write a run's results, in input order, to JSONL, CSV or Parquet; `progress` is told
    how many rows have been written."""
    if store.run(run_id) is None:
        raise StateError(f"no run '{run_id}'")
    rows = export_rows(store, run_id, progress=progress)
    return write_export(rows, target, format=format, **options)  # type: ignore[arg-type]
