"""Writing an export's file: its format from its suffix, written whole or not at all.

The file appears only once complete: it is written beside the target under a hidden
``.<name>.part`` name and renamed into place. A device, pipe or terminal that already exists
is written in place instead.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from batchpilot.errors import UserInputError

__all__ = ["atomic", "resolve_format", "sync"]

_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def resolve_format(target: Path, format: str) -> str:
    fmt = _SUFFIX_FORMATS.get(target.suffix.lower(), "") if format == "auto" else format
    if fmt in ("jsonl", "csv", "parquet", "dataset"):
        return fmt
    if format != "auto":
        raise UserInputError(
            f"export format is {format!r}; use one of auto, jsonl, csv, parquet, dataset"
        )
    raise UserInputError(
        f"{target}: cannot tell the export format from the suffix {target.suffix or '(none)'!r}; "
        f"name the file with one of {', '.join(_SUFFIX_FORMATS)} or choose the format "
        "(dataset for a Hugging Face datasets directory)"
    )


def atomic(target: Path, write: Callable[[Path], int]) -> int:
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


def sync(stream: IO[Any]) -> None:
    stream.flush()
    try:
        os.fsync(stream.fileno())
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # a pipe or device: nothing to sync
            raise
