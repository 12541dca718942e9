"""Write a run's results, joined to their input rows, to JSONL, CSV or Parquet.

Rows stream through, so memory is bounded by one chunk of rows whatever the size of the
run. The file appears only once complete: it is written beside the target under a hidden
``.<name>.part`` name and renamed into place.

CSV and Parquet need their columns before the first row is written, so the columns come
from the first ``CHUNK_ROWS`` rows, which are held back until then. When there are more
rows than that, the file gets a last ``extra`` column: the fields of a later row that have
no column of their own (and, in Parquet, values that do not fit their column's type) are
written into it as one JSON object.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from batchpilot.data.rows import record_id
from batchpilot.errors import MissingDependency, StateError, UserInputError

__all__ = ["CHUNK_ROWS", "ExportFormat", "ExportRow", "write_back_nested", "write_export"]

ExportFormat = Literal["auto", "jsonl", "csv", "parquet"]

CHUNK_ROWS = 1000
"""How many rows fix a table's columns, and how many go in each Parquet row group."""

_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_UNANSWERED = frozenset({"failed", "skipped", "pending", "cancelled"})

# The columns every table starts or ends with, and the pyarrow type factory for those
# whose type must not depend on the first rows' values.
_META_COLUMNS: dict[str, str | None] = {
    "id": None,
    "status": None,
    "attempts": "int64",
    "lane": None,
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cost_usd": "float64",
    "error": None,
}
_WRITE_BACK_COLUMNS: dict[str, str | None] = {
    "_batchpilot.status": None,
    "_batchpilot.attempts": "int64",
    "_batchpilot.error": None,
}

_Sections = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
_Seed = tuple[dict[str, str | None], dict[str, str | None], dict[str, str | None]]


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One row of a run: its input, its outcome and what it cost."""

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


def write_export(
    rows: Iterable[ExportRow],
    target: Path,
    *,
    format: ExportFormat = "auto",
    include_input: bool = True,
    flatten: bool = True,
    response_key: str | None = None,
) -> int:
    """Write ``rows`` to ``target`` in their order and return how many were written.

    A row holds ``id``, ``status``, ``attempts``, ``input``, ``output`` (the parsed answer,
    else the text, else the embedding), token usage, ``cost_usd``, ``error`` and ``lane``.
    CSV and Parquet spread ``input`` and a structured ``output`` into ``input.`` and
    ``output.`` columns, all the way down with ``flatten``; otherwise nested values are
    JSON text in CSV and structs in Parquet. With ``response_key``, a row is the input row
    with the answer added under that key, plus ``_batchpilot`` (status, attempts, error).
    """
    target = Path(target)
    fmt = _resolve_format(target, format)
    if fmt == "jsonl":
        return _atomic(target, lambda part: _write_jsonl(rows, part, include_input, response_key))
    pyarrow = _pyarrow() if fmt == "parquet" else None
    in_struct = pyarrow is not None
    records = (_sections(row, include_input, flatten, in_struct, response_key) for row in rows)
    seed: _Seed = (_META_COLUMNS, {}, {"output": None})
    if response_key is not None:
        seed = ({}, {}, _WRITE_BACK_COLUMNS)
    if pyarrow is None:
        return _atomic(target, lambda part: _write_csv(records, seed, part))
    return _atomic(target, lambda part: _write_parquet(pyarrow, records, seed, part))


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
    return _atomic(
        Path(target),
        lambda part: _write_nested(results, Path(source), part, parts, response_key, id_field),
    )


def _resolve_format(target: Path, format: str) -> str:
    fmt = _SUFFIX_FORMATS.get(target.suffix.lower(), "") if format == "auto" else format
    if fmt in ("jsonl", "csv", "parquet"):
        return fmt
    if format != "auto":
        raise UserInputError(f"export format is {format!r}; use one of auto, jsonl, csv, parquet")
    raise UserInputError(
        f"{target}: cannot tell the export format from the suffix {target.suffix or '(none)'!r}; "
        f"name the file with one of {', '.join(_SUFFIX_FORMATS)} or choose the format"
    )


def _atomic(target: Path, write: Callable[[Path], int]) -> int:
    """Write through a temporary file renamed into place; a device, pipe or terminal that
    already exists (`/dev/stdout`, a FIFO) is written in place instead, never replaced."""
    if target.exists() and not target.is_file():
        try:
            return write(target)
        except OSError as error:
            raise UserInputError(f"{target}: cannot write the export ({error.strerror})") from None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"{target.parent}: cannot be created ({error.strerror})") from None
    part = target.with_name(f".{target.name}.part")
    try:
        count = write(part)
        part.replace(target)
    except OSError as error:
        part.unlink(missing_ok=True)
        raise UserInputError(f"{target}: cannot write the export ({error.strerror})") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return count


def _sync(stream: IO[Any]) -> None:
    stream.flush()
    try:
        os.fsync(stream.fileno())
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # a pipe or device: nothing to sync
            raise


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # Integers past 64 bits, lone surrogates, types orjson does not know.
        return json.dumps(value, default=str).encode()


def _output(row: ExportRow) -> Any:
    if row.parsed is not None:
        return row.parsed
    return row.content if row.content is not None else row.embedding


def _input_fields(row: ExportRow) -> dict[str, Any]:
    if row.data is None:
        raise UserInputError(
            f"row {row.row_id!r}: the run did not keep its input fields, so the answer "
            "cannot be written back into them; export without a response key"
        )
    return row.data


def _outcome(row: ExportRow) -> dict[str, Any]:
    return {"status": row.status, "attempts": row.attempts, "error": row.error}


def _jsonl_record(row: ExportRow, include_input: bool, response_key: str | None) -> Any:
    if response_key is not None:
        return {**_input_fields(row), response_key: _output(row), "_batchpilot": _outcome(row)}
    record = {
        "id": row.row_id,
        "status": row.status,
        "attempts": row.attempts,
        "input": row.data,
        "output": _output(row),
        "usage": {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens},
        "cost_usd": row.cost_usd,
        "error": row.error,
        "lane": row.lane,
        "request_id": row.request_id,
    }
    if not include_input:
        del record["input"]
    return record


def _write_jsonl(
    rows: Iterable[ExportRow], part: Path, include_input: bool, response_key: str | None
) -> int:
    count = 0
    with part.open("wb") as stream:
        for row in rows:
            stream.write(_json(_jsonl_record(row, include_input, response_key)) + b"\n")
            count += 1
        _sync(stream)
    return count


def _spread(name: str, value: Any, levels: int, into: dict[str, Any]) -> None:
    """Put ``value`` under ``name``, spreading dicts ``levels`` deep (-1: all the way)."""
    if levels != 0 and isinstance(value, dict) and value:
        for key, item in value.items():
            _spread(f"{name}.{key}", item, levels - 1, into)
    else:
        into[name] = value


def _sections(
    row: ExportRow, include_input: bool, flatten: bool, in_struct: bool, response_key: str | None
) -> _Sections:
    answer = _output(row)
    if response_key is not None:
        levels = -1 if flatten else 0
        fields: dict[str, Any] = {}
        for key, value in _input_fields(row).items():
            if key != response_key:
                _spread(key, value, levels, fields)
        output: dict[str, Any] = {}
        _spread(response_key, answer, levels, output)
        outcome = {f"_batchpilot.{key}": value for key, value in _outcome(row).items()}
        return fields, output, outcome
    # Unflattened, CSV still gives each top-level field its own column; Parquet nests.
    levels = -1 if flatten else (0 if in_struct else 1)
    values: tuple[Any, ...] = (row.row_id, row.status, row.attempts, row.lane)
    values += (row.input_tokens, row.output_tokens, row.cost_usd, row.error)
    meta = dict(zip(_META_COLUMNS, values, strict=True))
    inputs: dict[str, Any] = {}
    if include_input and row.data:
        _spread("input", row.data, levels, inputs)
    output = {}
    _spread("output", answer, levels, output)
    return meta, inputs, output


def _layout(
    records: Iterator[_Sections], seed: _Seed
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


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list | tuple):
        return _json(value).decode()
    return str(value)


def _write_csv(records: Iterator[_Sections], seed: _Seed, part: Path) -> int:
    columns, extra, flat = _layout(records, seed)
    count = 0
    with part.open("w", encoding="utf-8", newline="", errors="backslashreplace") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns if extra is None else [*columns, extra])
        for record in flat:
            cells = [_cell(record.pop(name, None)) for name in columns]
            if extra is not None:
                cells.append(_cell(record or None))
            writer.writerow(cells)
            count += 1
        _sync(stream)
    return count


def _pyarrow() -> Any:
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


def _write_parquet(pa: Any, records: Iterator[_Sections], seed: _Seed, part: Path) -> int:
    columns, extra, flat = _layout(records, seed)
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
                    arrays.append(pa.array([_json(row).decode() if row else None for row in chunk]))
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                count += len(chunk)
                chunk = list(islice(flat, CHUNK_ROWS))
        finally:
            writer.close()
        _sync(stream)
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
        values = [None if value is None else _cell(value) for value in values]
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
                answer = None if row.status in _UNANSWERED else _output(row)
                if isinstance(element, dict):
                    element[response_key] = answer
                else:
                    items[position] = {"value": element, response_key: answer}
                if row.status in _UNANSWERED or row.status == "fallback":
                    errors.append({"id": row.row_id, "item": item, **_outcome(row)})
                count += 1
            if errors:
                record["_batchpilot_errors"] = errors
            stream.write(_json(record) + b"\n")
        leftover = next(results, None)
        if leftover is not None:
            raise StateError(
                f"{source.name}: the run has a result for {leftover.row_id!r} after the "
                "file's last item; the file no longer matches the run"
            )
        _sync(stream)
    return count
