"""JSONL exports: one object per row, nested as it is."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from batchpilot.export.files import write_lines
from batchpilot.export.joined import StoredRows
from batchpilot.export.rows import (
    ExportRow,
    answer_of,
    dump_json,
    input_fields,
    input_json,
    outcome,
)

__all__ = ["jsonl_record", "write_jsonl"]


def jsonl_record(row: ExportRow, include_input: bool, response_key: str | None) -> Any:
    if response_key is not None:
        return {**input_fields(row), response_key: answer_of(row), "_batchpilot": outcome(row)}
    record = {
        "id": row.row_id,
        "status": row.status,
        "attempts": row.attempts,
        "input": input_json(row.data_json, row.data) if include_input else None,
        "output": answer_of(row),
        "usage": {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens},
        "cost_usd": row.cost_usd,
        "error": row.error,
        "lane": row.lane,
        "request_id": row.request_id,
    }
    if not include_input:
        del record["input"]
    return record


def write_jsonl(
    rows: Iterable[ExportRow], part: Path, include_input: bool, response_key: str | None
) -> int:
    def line(row: ExportRow) -> bytes:
        return dump_json(jsonl_record(row, include_input, response_key))

    if isinstance(rows, StoredRows) and response_key is None:
        lines = rows.jsonl_lines(include_input, line)
    else:
        lines = (line(row) + b"\n" for row in rows)
    with part.open("wb") as stream:
        return write_lines(lines, stream)
