"""Parquet exports, written in row groups of ``CHUNK_ROWS``; pyarrow is an extra."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from batchpilot.errors import MissingDependency
from batchpilot.export.files import sync
from batchpilot.export.rows import CHUNK_ROWS, dump_json
from batchpilot.export.table import Sections, Seed, cell, layout

__all__ = ["pyarrow_module", "write_parquet"]


def pyarrow_module() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependency(
            "writing Parquet needs pyarrow: pip install 'batchpilot[parquet]'"
        ) from None
    return pyarrow


def _arrow_errors(pa: Any) -> tuple[type[BaseException], ...]:
    return (pa.ArrowException, TypeError, ValueError, OverflowError)


def write_parquet(pa: Any, records: Iterator[Sections], seed: Seed, part: Path) -> int:
    columns, extra, flat = layout(records, seed)
    chunk = list(islice(flat, CHUNK_ROWS))
    types = {name: kind for section in seed for name, kind in section.items() if kind}
    fields = [pa.field(name, _column_type(pa, name, types, chunk)) for name in columns]
    if extra is not None:
        fields.append(pa.field(extra, pa.string()))
    schema = pa.schema(fields)
    count = 0
    with part.open("wb") as stream:
        writer = pa.parquet.ParquetWriter(stream, schema)
        try:
            while chunk:
                arrays = [_column(pa, schema.field(name), chunk) for name in columns]
                if extra is not None:
                    arrays.append(
                        pa.array([dump_json(row).decode() if row else None for row in chunk])
                    )
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                count += len(chunk)
                chunk = list(islice(flat, CHUNK_ROWS))
        finally:
            writer.close()
        sync(stream)
    return count


def _column_type(pa: Any, name: str, types: dict[str, str], chunk: list[dict[str, Any]]) -> Any:
    """The fixed type of column ``name``, else the type of its values in the first rows;
    text when they disagree or are all null."""
    if name in types:
        return getattr(pa, types[name])()
    try:
        kind = pa.array([row.get(name) for row in chunk]).type
    except _arrow_errors(pa):
        return pa.string()
    # Parquet cannot store a struct without fields, the type of ``{}``.
    return pa.string() if pa.types.is_null(kind) or "struct<>" in str(kind) else kind


def _fits(pa: Any, value: Any, kind: Any) -> bool:
    """False for the values pyarrow would convert to ``kind`` by losing part of them."""
    if value is None:
        return True
    if pa.types.is_integer(kind):
        return not isinstance(value, float)
    if pa.types.is_struct(kind) and isinstance(value, dict):
        fields = {field.name: field.type for field in kind}
        return all(key in fields and _fits(pa, item, fields[key]) for key, item in value.items())
    if pa.types.is_list(kind) and isinstance(value, list):
        return all(_fits(pa, item, kind.value_type) for item in value)
    return True


def _column(pa: Any, field: Any, chunk: list[dict[str, Any]]) -> Any:
    """Take the column ``field`` out of the rows of ``chunk``, leaving in them the values
    that do not fit its type (for the extra column) and null in the column."""
    kind = field.type
    values = [row.pop(field.name, None) for row in chunk]
    if pa.types.is_string(kind):
        values = [None if value is None else cell(value) for value in values]
    errors = _arrow_errors(pa)
    if all(_fits(pa, value, kind) for value in values):
        try:
            return pa.array(values, type=kind)
        except errors:
            pass
    for position, (value, row) in enumerate(zip(values, chunk, strict=True)):
        try:
            if _fits(pa, value, kind):
                pa.array([value], type=kind)
                continue
        except errors:
            pass
        row[field.name] = value
        values[position] = None
    return pa.array(values, type=kind)
