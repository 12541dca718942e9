"""The unit of work read from a dataset, the description of where to read it, and the
shared logic that turns plain records into rows (ids, nested records)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchpilot.errors import UserInputError
from batchpilot.jsontypes import json_type_name

__all__ = ["DatasetSpec", "Format", "InputSpec", "Row", "build_rows", "record_id"]

Format = Literal["auto", "jsonl", "csv", "parquet", "dir"]


@dataclass(frozen=True, slots=True)
class Row:
    """One item of the input, ready to be rendered into a request."""

    index: int
    """0-based position in input order, across the whole input."""
    id: str
    data: dict[str, Any]
    """The fields a template can use."""
    source: str
    """Where the row came from, for messages: ``plots.jsonl:12``, ``docs/a.txt``."""
    path: tuple[str | int, ...] = ()
    """For nested records: the location inside the line, e.g. ``("tweets", 2)``."""


@dataclass(frozen=True)
class InputSpec:
    """Where a job's input lives and how to read it."""

    path: Path
    format: Format = "auto"
    """``auto`` picks by suffix, or ``dir`` for a directory."""
    id_field: str | None = None
    """The field holding each row's id; ``None`` numbers rows ``row-1``, ``row-2``, ...
    (a directory's rows are named by their file)."""
    records: str | None = None
    """A dotted path to a list inside each line; every element becomes a row."""
    glob: str = "*"
    """For a directory: which files; recursive when it contains ``**``."""
    text_field: str = "text"
    """For a directory: the field a text file's content goes into."""
    encoding: str = "utf-8"
    csv_delimiter: str | None = None
    """``None`` means ``,`` for ``.csv`` and a tab for ``.tsv``."""


@dataclass(frozen=True)
class DatasetSpec:
    """A Hugging Face dataset as a job's input: by name from the local cache, or a directory
    written by ``save_to_disk``."""

    name: str
    """As the job file gives it (``input.dataset``), for messages."""
    directory: Path | None = None
    """The directory when ``name`` is a path; ``None`` for a name looked up in the cache."""
    split: str | None = None
    config: str | None = None
    """The dataset's configuration (subset), when it has several."""
    id_field: str | None = None


def build_rows(
    items: Iterable[tuple[str, Any]],
    *,
    id_field: str | None = None,
    records: str | None = None,
) -> Iterator[Row]:
    """Turn ``(source, record)`` pairs into rows, numbering and naming them.

    Each record must be a mapping. With ``records``, every element of the list found at
    that dotted path becomes its own row, carrying the rest of the record as ``_parent``.
    """
    parts = _split_records_path(records) if records is not None else None
    index = 0
    for number, (source, record) in enumerate(items, start=1):
        if not isinstance(record, Mapping):
            raise UserInputError(
                f"{source}: expected an object with named fields, got {json_type_name(record)}"
            )
        if parts is None:
            yield Row(
                index, record_id(record, id_field, f"row-{number}", source), dict(record), source
            )
            index += 1
            continue
        label = ".".join(parts)
        elements = _find_list(record, parts, source)
        parent = _without(record, parts)
        line_id: str | None = None
        for position, element in enumerate(elements):
            element_id = _own_id(element, id_field)
            if element_id is None:
                if line_id is None:
                    line_id = record_id(record, id_field, f"row-{number}", source)
                element_id = f"{line_id}/{label}[{position}]"
            data = dict(element) if isinstance(element, Mapping) else {"value": element}
            data["_parent"] = parent
            yield Row(
                index,
                element_id,
                data,
                f"{source} {label}[{position}]",
                (*parts, position),
            )
            index += 1


def _split_records_path(records: str) -> tuple[str, ...]:
    parts = tuple(records.split("."))
    if not all(part.strip() for part in parts):
        raise UserInputError(
            f"`input.records` is {records!r}: expected a dotted path such as "
            "'tweets' or 'data.items'"
        )
    return parts


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def record_id(record: Mapping[str, Any], id_field: str | None, fallback: str, source: str) -> str:
    """The id of ``record``: its ``id_field`` as a string, or ``fallback`` without one."""
    if id_field is None:
        return fallback
    if id_field not in record:
        raise UserInputError(
            f"{source}: no `{id_field}` field, which `input.id_field` names as the id; "
            "add it to every row or change `input.id_field`"
        )
    value = record[id_field]
    if _is_empty(value):
        raise UserInputError(f"{source}: the id field `{id_field}` is empty; every row needs an id")
    return str(value)


def _own_id(element: Any, id_field: str | None) -> str | None:
    if id_field is None or not isinstance(element, Mapping):
        return None
    value = element.get(id_field)
    return None if _is_empty(value) else str(value)


def _find_list(
    record: Mapping[str, Any], parts: tuple[str, ...], source: str
) -> list[Any] | tuple[Any, ...]:
    records = ".".join(parts)
    current: Any = record
    for depth, part in enumerate(parts):
        if not isinstance(current, Mapping) or part not in current:
            reached = ".".join(parts[: depth + 1])
            raise UserInputError(
                f"{source}: no `{records}` list to read records from "
                f"(`{reached}` is missing); check `input.records`"
            )
        current = current[part]
    if not isinstance(current, list | tuple):
        raise UserInputError(
            f"{source}: `{records}` is {json_type_name(current)}, expected a list of records"
        )
    return current


def _without(record: Mapping[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
    """A shallow copy of ``record`` minus the list at ``parts`` (copying only that path)."""
    head, *rest = parts
    copy = dict(record)
    if rest:
        copy[head] = _without(record[head], tuple(rest))
    else:
        del copy[head]
    return copy
