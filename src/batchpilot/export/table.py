"""Tables (CSV, and the layout Parquet shares): columns from the first rows, input and
structured output spread into ``input.`` and ``output.`` columns.

The columns come from the first ``CHUNK_ROWS`` rows, which are held back until then. When
there are more rows than that, the file gets a last ``extra`` column: the fields of a later
row that have no column of their own (and, in Parquet, values that do not fit their
column's type) are written into it as one JSON object.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

from batchpilot.export.files import sync
from batchpilot.export.rows import (
    CHUNK_ROWS,
    ExportRow,
    answer_of,
    dump_json,
    input_fields,
    outcome,
)

__all__ = [
    "META_COLUMNS",
    "WRITE_BACK_COLUMNS",
    "Sections",
    "Seed",
    "cell",
    "layout",
    "sections",
    "write_csv",
]

# The columns every table starts or ends with, and the pyarrow type factory for those
# whose type must not depend on the first rows' values.
META_COLUMNS: dict[str, str | None] = {
    "id": None,
    "status": None,
    "attempts": "int64",
    "lane": None,
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cost_usd": "float64",
    "error": None,
}
WRITE_BACK_COLUMNS: dict[str, str | None] = {
    "_batchpilot.status": None,
    "_batchpilot.attempts": "int64",
    "_batchpilot.error": None,
}

Sections = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
Seed = tuple[dict[str, str | None], dict[str, str | None], dict[str, str | None]]


def _spread(name: str, value: Any, levels: int, into: dict[str, Any]) -> None:
    """Put ``value`` under ``name``, spreading dicts ``levels`` deep (-1: all the way)."""
    if levels != 0 and isinstance(value, dict) and value:
        for key, item in value.items():
            _spread(f"{name}.{key}", item, levels - 1, into)
    else:
        into[name] = value


def sections(
    row: ExportRow, include_input: bool, flatten: bool, in_struct: bool, response_key: str | None
) -> Sections:
    answer = answer_of(row)
    if response_key is not None:
        levels = -1 if flatten else 0
        fields: dict[str, Any] = {}
        for key, value in input_fields(row).items():
            if key != response_key:
                _spread(key, value, levels, fields)
        output: dict[str, Any] = {}
        _spread(response_key, answer, levels, output)
        ended = {f"_batchpilot.{key}": value for key, value in outcome(row).items()}
        return fields, output, ended
    # Unflattened, CSV still gives each top-level field its own column; Parquet nests.
    levels = -1 if flatten else (0 if in_struct else 1)
    values: tuple[Any, ...] = (row.row_id, row.status, row.attempts, row.lane)
    values += (row.input_tokens, row.output_tokens, row.cost_usd, row.error)
    meta = dict(zip(META_COLUMNS, values, strict=True))
    inputs: dict[str, Any] = {}
    if include_input and row.data:
        _spread("input", row.data, levels, inputs)
    output = {}
    _spread("output", answer, levels, output)
    return meta, inputs, output


def layout(
    records: Iterator[Sections], seed: Seed
) -> tuple[list[str], str | None, Iterator[dict[str, Any]]]:
    """The columns, from the first rows; the extra column's name if the file needs one;
    and every row as a flat dict."""
    sample = list(islice(records, CHUNK_ROWS))
    names = [dict.fromkeys(section) for section in seed]
    for sections in sample:
        for known, section in zip(names, sections, strict=True):
            known.update(dict.fromkeys(section))
    columns = [name for known in names for name in known]
    following = next(records, None)
    extra = None
    if following is not None:
        sample.append(following)
        extra = "extra"
        while extra in columns:
            extra = "_" + extra
    return columns, extra, ({**a, **b, **c} for a, b, c in chain(sample, records))


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list | tuple):
        return dump_json(value).decode()
    return str(value)


def write_csv(records: Iterator[Sections], seed: Seed, part: Path) -> int:
    columns, extra, flat = layout(records, seed)
    count = 0
    with part.open("w", encoding="utf-8", newline="", errors="backslashreplace") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns if extra is None else [*columns, extra])
        for record in flat:
            cells = [cell(record.pop(name, None)) for name in columns]
            if extra is not None:
                cells.append(cell(record or None))
            writer.writerow(cells)
            count += 1
        sync(stream)
    return count
