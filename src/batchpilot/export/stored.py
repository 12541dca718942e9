"""A run's rows read from the store, in input order, joined with their results."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from batchpilot.answers import parsed_answer, response_content
from batchpilot.errors import StateError
from batchpilot.export.rows import ExportRow
from batchpilot.export.write import write_export
from batchpilot.store import Store

__all__ = ["export_rows", "export_run"]


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or an integer past 64 bits in a row: Python reads them
        return json.loads(text)


def export_rows(
    store: Store, run_id: str, fallback: Callable[[dict[str, Any] | None], Any] | None = None
) -> Iterator[ExportRow]:
    """Every row of a run, in input order, joined with its result; rows that finally failed
    get `fallback(input row)` as their answer when a fallback is given (status `fallback`)."""
    for row in store.joined_rows(run_id):
        response = _loads(row.response_json) if row.response_json else None
        content, embedding = response_content(response)
        parsed: Any = parsed_answer(content)
        status = "skipped" if row.request_id is None else (row.state or "pending")
        if status == "failed" and fallback is not None:
            data = _loads(row.data_json) if row.data_json else None
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
            data=_loads(row.data_json) if row.data_json else None,
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
