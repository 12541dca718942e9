"""Writing an export's file: its format from its suffix, written whole or not at all.

The file appears only once complete: it is written beside the target under a hidden
``.<name>.part`` name and renamed into place. A device, pipe or terminal that already exists
is written in place instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import IO, Any

from batchpilot.errors import UserInputError

__all__ = ["atomic", "resolve_format", "sync", "write_lines"]

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


LINES_A_WRITE = 1_000
SYNC_EVERY = 16 << 20
"""Bytes written between two syncs started in the background while the rest is written."""


def write_lines(lines: Iterable[bytes], stream: IO[bytes]) -> int:
    """Write `lines` (each with its newline), a thousand at a time, and sync the file: how many
    were written. A regular file's written part is synced in the background every 16 MB as
    the rest is made, so that the last sync has little left to wait for."""
    regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    worker: threading.Thread | None = None
    count = unsynced = 0
    found = iter(lines)
    try:
        while chunk := list(islice(found, LINES_A_WRITE)):
            text = b"".join(chunk)
            stream.write(text)
            count += len(chunk)
            unsynced += len(text)
            if regular and unsynced >= SYNC_EVERY and (worker is None or not worker.is_alive()):
                stream.flush()
                worker = threading.Thread(target=_sync_quietly, args=(stream.fileno(),))
                worker.start()
                unsynced = 0
    finally:
        if worker is not None:
            worker.join()
    sync(stream)
    return count


def _sync_quietly(descriptor: int) -> None:
    """Sync in the background; the last sync, in the foreground, reports what fails."""
    with contextlib.suppress(OSError):
        os.fsync(descriptor)
