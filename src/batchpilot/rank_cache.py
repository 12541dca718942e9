"""Token ranks decoded once per machine: a cache file of the decoded ranks in the user's cache.

Decoding a `.tiktoken` rank file (gunzip, sha256, 200,000 lines of base64) takes most of a
second; reading the decoded ranks back takes a few hundredths. The file is named after the
sha256 of the rank file it was decoded from and carries the sha256 of its own contents, so a
stale, partly written or damaged file is never used: it is decoded again and written anew.
Writers write a file of their own and rename it into place, so concurrent writers are safe and
a reader sees a whole file or none. A cache that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from array import array
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_dir", "cached_ranks"]

CACHE_DIR_ENV = "BATCHPILOT_CACHE_DIR"
_MAGIC = b"BPRANKS1"
_HEAD = len(_MAGIC) + 32 + 32  # magic, the source's sha256, the payload's sha256


def cache_dir() -> Path:
    """`$BATCHPILOT_CACHE_DIR/tokens`, else the user's cache directory's `batchpilot/tokens`."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser() / "tokens"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "batchpilot" / "tokens"


def cached_ranks(
    name: str, source_sha256: str, decode: Callable[[], dict[bytes, int]]
) -> dict[bytes, int]:
    """The ranks of encoding `name` (decoded from a rank file whose sha256 is `source_sha256`):
    read from the cache, or decoded with `decode` and written to it."""
    path = cache_dir() / f"{name}-{source_sha256[:16]}.ranks"
    source = bytes.fromhex(source_sha256)
    ranks = _read(path, source)
    if ranks is None:
        ranks = decode()
        _write(path, source, ranks)
    return ranks


def _uint32s(values: list[int]) -> bytes:
    numbers = array("I", values)
    if sys.byteorder == "big":  # pragma: no cover - the file is little-endian everywhere
        numbers.byteswap()
    return numbers.tobytes()


def _from_uint32s(data: bytes | memoryview) -> array[int]:
    numbers = array("I")
    numbers.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        numbers.byteswap()
    return numbers


def _read(path: Path, source: bytes) -> dict[bytes, int] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < _HEAD + 4 or data[:8] != _MAGIC or data[8:40] != source:
        return None
    payload = memoryview(data)[_HEAD:]
    if hashlib.sha256(payload).digest() != data[40:_HEAD]:
        return None
    count = int.from_bytes(payload[:4], "little")
    blob_at = 4 + 8 * count
    if count == 0 or len(payload) < blob_at:
        return None
    ranks = _from_uint32s(payload[4 : 4 + 4 * count])
    ends = _from_uint32s(payload[4 + 4 * count : blob_at])
    blob = bytes(payload[blob_at:])
    if ends[-1] != len(blob):
        return None
    starts = [0, *ends[:-1]]
    tokens = [blob[start:end] for start, end in zip(starts, ends, strict=True)]
    return dict(zip(tokens, ranks, strict=True))


def _write(path: Path, source: bytes, ranks: dict[bytes, int]) -> None:
    tokens = list(ranks)
    ends, total = [], 0
    for token in tokens:
        total += len(token)
        ends.append(total)
    head = [len(tokens).to_bytes(4, "little"), _uint32s(list(ranks.values())), _uint32s(ends)]
    payload = b"".join([*head, *tokens])
    data = _MAGIC + source + hashlib.sha256(payload).digest() + payload
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            Path(temporary).replace(path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError:
        return  # a cache that cannot be written: every process decodes the ranks itself
