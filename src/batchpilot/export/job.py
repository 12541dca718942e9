"""A job's output: its run's rows written as its output section says.

The output section decides what is written (a table, or answers written back into the input
records) and, in target mode, which rows (the first N valid ones), whatever the format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from batchpilot.errors import UserInputError
from batchpilot.export.nested import write_back_nested
from batchpilot.export.progress import ExportProgress
from batchpilot.export.rows import ExportFormat, ExportRow
from batchpilot.export.stored import export_rows
from batchpilot.export.write import write_export
from batchpilot.spec import JobSpec, TargetSpec
from batchpilot.store import Store
from batchpilot.validate import load_callable

__all__ = ["export_job", "write_job_output"]


def _target_rows(rows: Iterable[ExportRow], target: TargetSpec) -> Iterator[ExportRow]:
    """The valid rows, in input order, until the target is reached."""
    count = 0
    for row in rows:
        if count >= target.valid:
            return
        if row.status != "succeeded":
            continue
        if target.items is None:
            count += 1
        else:
            value = row.parsed.get(target.items) if isinstance(row.parsed, dict) else None
            count += len(value) if isinstance(value, list) else 0
        yield row


def export_job(
    store: Store,
    run_id: str,
    job: JobSpec,
    target: Path,
    *,
    format: ExportFormat | None = None,
    include_input: bool | None = None,
    progress: ExportProgress | None = None,
) -> int:
    """Export as the job's output section says: a results table, or answers written back into
    the input records (inside their lines when the input has nested records). `format` and
    `include_input` override the job's; the rows are the same whatever the format. `progress`
    is told how many rows have been read."""
    fallback = _guarded_fallback(job.fallback, job.base_dir) if job.fallback else None
    rows = export_rows(store, run_id, fallback=fallback, progress=progress)
    return write_job_output(job, rows, target, format=format, include_input=include_input)


def _guarded_fallback(name: str, base_dir: Path) -> Callable[[dict[str, Any] | None], Any]:
    """The job's fallback, whose exceptions become a clear error naming it and the row."""
    function = load_callable(name, base_dir, "fallback")

    def fallback(row: dict[str, Any] | None) -> Any:
        try:
            return function(row)
        except Exception as exc:
            shown = json.dumps(row, default=str)[:200]
            raise UserInputError(
                f"fallback {name} raised {type(exc).__name__}: {exc} for the input row "
                f"{shown}; fix it, then export again with `batchpilot export` (the answers "
                "are kept)"
            ) from exc

    return fallback


def write_job_output(
    job: JobSpec,
    rows: Iterable[ExportRow],
    target: Path,
    *,
    format: ExportFormat | None = None,
    include_input: bool | None = None,
) -> int:
    """Write `rows` (a run's rows in input order) as the job's output section says, in
    `format` and with or without the input fields when they are given."""
    spec = job.output
    key = spec.response_key if spec is not None else None
    if key is not None and job.input.records is not None and job.input.path is not None:
        if format not in (None, "auto", "jsonl"):
            raise UserInputError(
                f"this job writes its answers back into the nested records of "
                f"{job.input.path}, which is JSONL; export it as jsonl (not {format})"
            )
        return write_back_nested(
            rows,
            job.resolve(job.input.path),
            target,
            records=job.input.records,
            response_key=key,
            id_field=job.input.id_field,
        )
    if key is not None and include_input is False:
        raise UserInputError(
            f"this job writes its answers back into its input records (output.response_key: "
            f"{key}), so the input cannot be left out; export it with the input"
        )
    if job.target is not None:
        rows = _target_rows(rows, job.target)
    if format is None:
        format = spec.format if spec else "auto"
    if include_input is None:
        include_input = spec.include_input if spec else True
    return write_export(rows, target, format=format, include_input=include_input, response_key=key)
