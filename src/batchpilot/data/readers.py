"""Streaming readers for JSONL, CSV/TSV, Parquet and directories of files.

Every reader yields one record at a time, so memory does not grow with the number of rows.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import orjson

from batchpilot.data.hub import count_dataset_rows, read_dataset_rows
from batchpilot.data.jsonlines import MAX_LINE_BYTES, bounded_lines, check_depth, parse_json
from batchpilot.data.rows import DatasetSpec, InputSpec, Row, build_rows, record_id
from batchpilot.errors import MissingDependency, UserInputError

__all__ = [
    "IMAGE_SUFFIXES",
    "PARQUET_BATCH_SIZE",
    "ResolvedFormat",
    "count_rows",
    "read_rows",
    "resolve_format",
    "rows_from_records",
]

ResolvedFormat = Literal["jsonl", "csv", "parquet", "dir"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
PARQUET_BATCH_SIZE = 1024

_SUFFIX_FORMATS: dict[str, ResolvedFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json-lines": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def resolve_format(spec: InputSpec) -> ResolvedFormat:
    """The format ``spec`` will be read as, checking that its path exists and fits."""
    path = Path(spec.path)
    if not path.exists():
        raise UserInputError(
            f"{path}: no such file or directory; check `input.path` in the job file"
        )
    if spec.format == "auto":
        if path.is_dir():
            return "dir"
        suffix = path.suffix.lower()
        if suffix in _SUFFIX_FORMATS:
            return _SUFFIX_FORMATS[suffix]
        hint = " (a JSON array is not streamable: write one object per line as JSONL)"
        raise UserInputError(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}"
            f"{hint if suffix == '.json' else ''}; set `input.format` to one of "
            "jsonl, csv, parquet, dir"
        )
    if spec.format not in ("jsonl", "csv", "parquet", "dir"):
        raise UserInputError(
            f"`input.format` is {spec.format!r}; use one of auto, jsonl, csv, parquet, dir"
        )
    if spec.format == "dir" and not path.is_dir():
        raise UserInputError(f"{path}: `input.format` is dir, but this is not a directory")
    if spec.format != "dir" and path.is_dir():
        raise UserInputError(
            f"{path}: is a directory, but `input.format` is {spec.format}; "
            "point `input.path` at a file or set `input.format: dir`"
        )
    return spec.format


def read_rows(spec: InputSpec | DatasetSpec) -> Iterator[Row]:
    """Stream the rows of the input ``spec`` describes, in input order.

    The path, format and encoding are checked at once; problems inside the data are
    raised as the rows are read.
    """
    if isinstance(spec, DatasetSpec):
        return read_dataset_rows(spec)
    fmt = resolve_format(spec)
    _check_encoding(spec.encoding)
    path = Path(spec.path)
    if fmt == "dir":
        _check_no_records(spec, fmt)
        return _dir_rows(spec, _dir_files(path, spec.glob))
    items: Iterable[tuple[str, Any]]
    if fmt == "jsonl":
        items = _jsonl_records(path, spec.encoding)
    elif fmt == "csv":
        _check_no_records(spec, fmt)
        items = _csv_records(path, spec.encoding, _delimiter(spec), spec.id_field)
    else:
        _pyarrow()
        items = _parquet_records(path)
    return build_rows(items, id_field=spec.id_field, records=spec.records)


def count_rows(spec: InputSpec | DatasetSpec) -> int | None:
    """How many rows ``read_rows`` will yield, if that is cheap to know; else ``None``.

    JSONL lines are counted without being parsed and Parquet files answer from their
    metadata; nested records can only be counted by reading them, so they give ``None``,
    as does a file too malformed to count.
    """
    if isinstance(spec, DatasetSpec):
        return count_dataset_rows(spec)
    fmt = resolve_format(spec)
    path = Path(spec.path)
    if fmt == "dir":
        return len(_dir_files(path, spec.glob))
    if spec.records is not None:
        return None
    if fmt == "jsonl":
        with _open_binary(path) as stream:
            return sum(1 for line in bounded_lines(stream, path.name) if line.strip())
    if fmt == "csv":
        _check_encoding(spec.encoding)
        try:
            with _open_text(path, spec.encoding) as stream:
                lines = sum(
                    1
                    for fields in csv.reader(
                        bounded_lines(stream, path.name), delimiter=_delimiter(spec)
                    )
                    if fields
                )
        except (UnicodeDecodeError, csv.Error):
            return None
        return max(lines - 1, 0)
    parquet = _open_parquet(path)
    try:
        return int(parquet.metadata.num_rows)
    finally:
        parquet.close()


def rows_from_records(
    records: Iterable[Mapping[str, Any]],
    id_field: str | None = None,
    source: str = "records",
) -> Iterator[Row]:
    """Rows from any iterable of mappings; ``source`` names them in messages (``records:3``)."""
    return build_rows(
        ((f"{source}:{number}", record) for number, record in enumerate(records, start=1)),
        id_field=id_field,
    )


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserInputError(
            f"`input.encoding` is {encoding!r}, which is not a known text encoding"
        ) from None


def _check_no_records(spec: InputSpec, fmt: ResolvedFormat) -> None:
    if spec.records is not None:
        raise UserInputError(
            f"{spec.path}: `input.records` reads lists nested inside JSONL or Parquet rows; "
            f"it does not apply to {fmt} input"
        )


def _text_encoding(encoding: str) -> str:
    """Read UTF-8 as ``utf-8-sig`` so that a byte-order mark is not taken as data."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


_BUFFER = 1024 * 1024
"""Bytes read at a time: few reads, so few waits for the GIL while tokens are counted."""


def _open_binary(path: Path) -> IO[bytes]:
    try:
        return path.open("rb", buffering=_BUFFER)
    except OSError as error:
        raise UserInputError(f"{path}: cannot be read ({error.strerror})") from None


def _open_text(path: Path, encoding: str) -> IO[str]:
    try:
        return path.open(encoding=_text_encoding(encoding), newline="")
    except OSError as error:
        raise UserInputError(f"{path}: cannot be read ({error.strerror})") from None


def _jsonl_records(path: Path, encoding: str) -> Iterator[tuple[str, Any]]:
    decode_as = _text_encoding(encoding)
    utf8 = decode_as == "utf-8-sig"
    name = path.name
    with _open_binary(path) as stream:
        for number, raw in enumerate(bounded_lines(stream, name), start=1):
            if raw.isspace() or not raw:  # as `not raw.strip()`, without copying the line
                continue
            source = f"{name}:{number}"
            if utf8:  # orjson reads UTF-8 itself; what it refuses takes the path below
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    pass
                else:
                    check_depth(value, source, raw)
                    yield source, value
                    continue
            try:
                text = raw.decode(decode_as)
            except UnicodeDecodeError as error:
                raise UserInputError(
                    f"{source}: not valid {encoding} text ({error.reason} at byte "
                    f"{error.start}); fix the line or set `input.encoding`"
                ) from None
            yield source, parse_json(text, source)


def _delimiter(spec: InputSpec) -> str:
    if spec.csv_delimiter is not None:
        return spec.csv_delimiter
    return "\t" if Path(spec.path).suffix.lower() == ".tsv" else ","


def _csv_records(
    path: Path, encoding: str, delimiter: str, id_field: str | None
) -> Iterator[tuple[str, Any]]:
    name = path.name
    with _open_text(path, encoding) as stream:
        reader = csv.DictReader(bounded_lines(stream, name), delimiter=delimiter)
        try:
            header = reader.fieldnames
            if header is None:
                raise UserInputError(
                    f"{name}: the file is empty; CSV input needs a header line naming the columns"
                )
            _check_header(name, header, id_field)
            width = len(header)
            for record in reader:
                source = f"{name}:{reader.line_num}"
                extra = record.pop(None, None)
                if extra is not None:
                    raise UserInputError(
                        f"{source}: {width + len(extra)} fields but the header has {width}; "
                        f"quote values that contain {delimiter!r}"
                    )
                missing = sum(1 for value in record.values() if value is None)
                if missing:
                    raise UserInputError(
                        f"{source}: {width - missing} fields but the header has {width}"
                    )
                yield source, record
        except UnicodeDecodeError as error:
            line, detail = _first_undecodable_line(path, encoding, error)
            raise UserInputError(
                f"{name}:{line}: not valid {encoding} text ({detail}); "
                "fix the file or set `input.encoding`"
            ) from None
        except csv.Error as error:
            raise UserInputError(f"{name}:{reader.line_num}: not valid CSV ({error})") from None


def _check_header(name: str, header: Sequence[str], id_field: str | None) -> None:
    seen: set[str] = set()
    for position, column in enumerate(header, start=1):
        if not column.strip():
            raise UserInputError(
                f"{name}:1: column {position} has no name; CSV input needs a header line "
                "naming every column"
            )
        if column in seen:
            raise UserInputError(f"{name}:1: the column name {column!r} appears twice")
        seen.add(column)
    if id_field is not None and id_field not in seen:
        raise UserInputError(
            f"{name}:1: no `{id_field}` column (the columns are {', '.join(header)}); "
            "check `input.id_field`"
        )


def _first_undecodable_line(
    path: Path, encoding: str, error: UnicodeDecodeError
) -> tuple[int | str, str]:
    """Find the line a decoding error is on; text is decoded in blocks, not lines."""
    decoder = codecs.getincrementaldecoder(_text_encoding(encoding))()
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as found:
                return number, found.reason
    return "?", error.reason


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependency(
            "reading Parquet needs pyarrow: pip install 'batchpilot[parquet]'"
        ) from None
    return pyarrow


def _open_parquet(path: Path) -> Any:
    pyarrow = _pyarrow()
    try:
        # Pre-buffering would fetch every row group's columns ahead of the batches,
        # so memory would grow with the file instead of one row group.
        return pyarrow.parquet.ParquetFile(path, pre_buffer=False)
    except (pyarrow.ArrowException, OSError) as error:
        raise UserInputError(f"{path.name}: not a readable Parquet file ({error})") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    pyarrow = _pyarrow()
    parquet = _open_parquet(path)
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_SIZE):
            for record in batch.to_pylist():
                number += 1
                yield f"{path.name}:{number}", record
    except pyarrow.ArrowException as error:
        raise UserInputError(
            f"{path.name}:{number + 1}: the Parquet file cannot be read ({error})"
        ) from None
    finally:
        parquet.close()


def _dir_files(root: Path, pattern: str) -> list[tuple[str, Path]]:
    """The files under ``root`` matching ``pattern``, sorted by relative path.

    Hidden files and directories (``.DS_Store``, ``.git``) are left out unless the
    pattern itself names a hidden part.
    """
    skip_hidden = not any(part.startswith(".") for part in PurePosixPath(pattern).parts)
    try:
        matches = list(root.glob(pattern))
    except (ValueError, NotImplementedError) as error:
        raise UserInputError(f"`input.glob` is {pattern!r}: {error}") from None
    found: list[tuple[str, Path]] = []
    for match in matches:
        relative = match.relative_to(root)
        if skip_hidden and any(part.startswith(".") for part in relative.parts):
            continue
        if match.is_file():
            found.append((relative.as_posix(), match))
    found.sort()
    return found


def _dir_rows(spec: InputSpec, files: list[tuple[str, Path]]) -> Iterator[Row]:
    root_name = Path(spec.path).absolute().name
    encoding = _text_encoding(spec.encoding)
    for index, (relative, file) in enumerate(files):
        source = f"{root_name}/{relative}"
        absolute = str(file.absolute())
        data: dict[str, Any]
        if file.suffix.lower() in IMAGE_SUFFIXES:
            data = {"image_path": absolute, "file_name": file.name}
        else:
            try:
                if file.stat().st_size > MAX_LINE_BYTES:
                    raise UserInputError(
                        f"{source}: the file is larger than {MAX_LINE_BYTES // 2**20} MiB, too "
                        "long for one request; split it, or narrow `input.glob`"
                    )
                content = file.read_bytes().decode(encoding)
            except OSError as error:
                raise UserInputError(f"{source}: cannot be read ({error.strerror})") from None
            except UnicodeDecodeError as error:
                raise UserInputError(
                    f"{source}: not valid {spec.encoding} text ({error.reason} at byte "
                    f"{error.start}); set `input.encoding` or narrow `input.glob` to text files"
                ) from None
            data = {spec.text_field: content, "file_name": file.name, "file_path": absolute}
        yield Row(index, record_id(data, spec.id_field, relative, source), data, source)
