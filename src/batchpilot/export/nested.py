"""Answers written back into the nested records of a JSONL input, line by line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batchpilot.data.rows import record_id
from batchpilot.errors import StateError, UserInputError
from batchpilot.export.files import atomic, sync
from batchpilot.export.rows import ExportRow, answer_of, dump_json, outcome

__all__ = ["write_back_nested"]

_UNANSWERED = frozenset({"failed", "skipped", "pending", "cancelled"})


def write_back_nested(
    rows: Iterable[ExportRow],
    source: Path,
    target: Path,
    *,
    records: str,
    response_key: str,
    id_field: str | None = None,
) -> int:
    """Copy the JSONL ``source`` to ``target`` with each nested item's answer added to it.

    ``records`` is the dotted path to the list in each line whose elements were the run's
    rows; ``rows`` must be those rows' results in input order. Every element gets the
    answer under ``response_key`` (``null`` when it has none), and a line with unanswered
    items, or items given a fallback answer, gets a ``_batchpilot_errors`` list (each entry's
    ``status`` says which). An element that is not an object becomes
    ``{"value": element, response_key: answer}``. Returns the number of items written.
    """
    results, parts = iter(rows), tuple(records.split("."))
    return atomic(
        Path(target),
        lambda part: _write_nested(results, Path(source), part, parts, response_key, id_field),
    )


def _source_lines(source: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with source.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            where = f"{source.name}:{number}"
            try:
                value = json.loads(raw.decode("utf-8-sig"))
            except ValueError as error:
                raise UserInputError(f"{where}: not valid UTF-8 JSON ({error})") from None
            if not isinstance(value, dict):
                raise UserInputError(f"{where}: expected an object with named fields")
            yield where, value


def _write_nested(
    results: Iterator[ExportRow],
    source: Path,
    part: Path,
    parts: tuple[str, ...],
    response_key: str,
    id_field: str | None,
) -> int:
    label = ".".join(parts)
    count = 0
    with part.open("wb") as stream:
        for number, (where, record) in enumerate(_source_lines(source), start=1):
            items: Any = record
            for key in parts:
                items = items.get(key) if isinstance(items, dict) else None
            if not isinstance(items, list):
                raise UserInputError(f"{where}: no `{label}` list of records")
            errors: list[dict[str, Any]] = []
            line_id: str | None = None
            for position, element in enumerate(items):
                item = f"{label}[{position}]"
                own = element.get(id_field) if id_field and isinstance(element, dict) else None
                expected = None if own is None or not str(own).strip() else str(own)
                if expected is None:
                    if line_id is None:
                        line_id = record_id(record, id_field, f"row-{number}", where)
                    expected = f"{line_id}/{item}"
                row = next(results, None)
                if row is None or row.row_id != expected:
                    found = "missing" if row is None else f"for {row.row_id!r}"
                    raise StateError(
                        f"{where} {item}: the item is {expected!r} but the run's next result "
                        f"is {found}; {source.name} no longer matches the run"
                    )
                answer = None if row.status in _UNANSWERED else answer_of(row)
                if isinstance(element, dict):
                    element[response_key] = answer
                else:
                    items[position] = {"value": element, response_key: answer}
                if row.status in _UNANSWERED or row.status == "fallback":
                    errors.append({"id": row.row_id, "item": item, **outcome(row)})
                count += 1
            if errors:
                record["_batchpilot_errors"] = errors
            stream.write(dump_json(record) + b"\n")
        leftover = next(results, None)
        if leftover is not None:
            raise StateError(
                f"{source.name}: the run has a result for {leftover.row_id!r} after the "
                "file's last item; the file no longer matches the run"
            )
        sync(stream)
    return count
