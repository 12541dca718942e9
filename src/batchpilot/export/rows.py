"""What an export is made of: a run's row with its input, its outcome and what it cost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from batchpilot.errors import UserInputError

__all__ = [
    "CHUNK_ROWS",
    "ExportFormat",
    "ExportRow",
    "StoredJSON",
    "answer_of",
    "dump_json",
    "input_fields",
    "input_json",
    "outcome",
]

ExportFormat = Literal["auto", "jsonl", "csv", "parquet", "dataset"]

CHUNK_ROWS = 1000
"""How many rows fix a table's columns, and how many go in each Parquet row group."""


@dataclass(slots=True)
class ExportRow:
    """One row of a run: its input, its outcome and what it cost. Not frozen: an export makes
    one for every row, and a frozen dataclass takes three times as long to make."""

    index: int  # 0-based input position
    row_id: str
    request_id: str | None  # None when the row was skipped at planning
    status: str  # succeeded, failed, skipped, pending or fallback
    attempts: int
    data: dict[str, Any] | None  # the input row's fields; None when the run did not keep them
    content: str | None  # the answer text; None for embeddings
    parsed: Any | None  # the structured answer when the job had a response schema
    embedding: list[float] | None
    response: dict[str, Any] | None  # the full response body
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    error: str | None  # "code: message" for failed rows
    lane: str | None  # batch, realtime or cache
    data_json: str | None = None  # the input row's JSON as the store keeps it, when read from one


class StoredJSON:
    """JSON text as the store keeps it, written into an export as it is."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _fragment(value: Any) -> Any:
    if value.__class__ is StoredJSON:
        return orjson.Fragment(value.text)
    raise TypeError


def _plain(value: Any) -> Any:
    if value.__class__ is StoredJSON:
        return json.loads(value.text)
    return str(value)


def dump_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_fragment, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # Integers past 64 bits, lone surrogates, types orjson does not know.
        return json.dumps(value, default=_plain).encode()


def input_json(data_json: str | None, data: Any) -> Any:
    """The input row as an export's JSON holds it: its JSON as the store keeps it, written as
    it is (no parse, no second serialization), unless it holds what only Python's reader takes
    (NaN, Infinity); then `data`, its parsed value."""
    if not data_json or "NaN" in data_json or "Infinity" in data_json:
        return data
    return StoredJSON(data_json)


def answer_of(row: ExportRow) -> Any:
    if row.parsed is not None:
        return row.parsed
    return row.content if row.content is not None else row.embedding


def input_fields(row: ExportRow) -> dict[str, Any]:
    if row.data is None:
        raise UserInputError(
            f"row {row.row_id!r}: the run did not keep its input fields, so the answer "
            "cannot be written back into them; export without a response key"
        )
    return row.data


def outcome(row: ExportRow) -> dict[str, Any]:
    return {"status": row.status, "attempts": row.attempts, "error": row.error}
