"""A run's output: its rows joined to their input, in input order, written as the job says.

A job's output section decides what is written (a table, or answers written back into the
input records) and, in target mode, which rows (the first N valid ones), whatever the format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from batchpilot.answers import parsed_answer, response_content
from batchpilot.errors import StateError, UserInputError
from batchpilot.export import ExportFormat, ExportRow, write_back_nested, write_export
from batchpilot.spec import JobSpec, TargetSpec
from batchpilot.store import Store
from batchpilot.validate import load_callable

__all__ = ["export_job", "export_rows", "export_run", "write_job_output"]


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
) -> int:
    """Export as the job's output section says: a results table, or answers written back into
    the input records (inside their lines when the input has nested records). `format` and
    `include_input` override the job's; the rows are the same whatever the format."""
    fallback = _guarded_fallback(job.fallback, job.base_dir) if job.fallback else None
    rows = export_rows(store, run_id, fallback=fallback)
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
    if key is not None and job.input.records is not None:
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


def export_rows(
    store: Store, run_id: str, fallback: Callable[[dict[str, Any] | None], Any] | None = None
) -> Iterator[ExportRow]:
    """Every row of a run, in input order, joined with its result; rows that finally failed
    get `fallback(input row)` as their answer when a fallback is given (status `fallback`)."""
    for row in store.joined_rows(run_id):
        response = json.loads(row.response_json) if row.response_json else None
        content, embedding = response_content(response)
        parsed: Any = parsed_answer(content)
        status = "skipped" if row.request_id is None else (row.state or "pending")
        if status == "failed" and fallback is not None:
            data = json.loads(row.data_json) if row.data_json else None
            answer = fallback(data)
            status = "fallback"
            if isinstance(answer, dict | list):
                parsed, content = answer, json.dumps(answer)
            else:
                content = None if answer is None else str(answer)
        yield ExportRow(
            index=row.row_index,
            row_id=row.row_id,
            request_id=row.request_id,
            status=status,
            attempts=row.attempts or 0,
            data=json.loads(row.data_json) if row.data_json else None,
            content=content,
            parsed=parsed,
            embedding=embedding,
            response=response,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=row.cost_usd,
            error=row.skip_reason if row.request_id is None else row.error,
            lane=row.lane,
        )


def export_run(
    store: Store, run_id: str, target: Path, *, format: str = "auto", **options: Any
) -> int:
    """Write a run's results, in input order, to JSONL, CSV or Parquet."""
    if store.run(run_id) is None:
        raise StateError(f"no run '{run_id}'")
    return write_export(export_rows(store, run_id), target, format=format, **options)  # type: ignore[arg-type]
