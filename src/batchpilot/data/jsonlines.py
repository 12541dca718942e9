"""Reading JSON lines safely: bounded line size and nesting, strict numbers and text.

Every JSONL the user gives (input rows, a batch requests file, an estimate sample) goes
through here, so an oversized, over-nested or non-standard line is a clear error naming the
file and line, found before the line is held in memory whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import IO, Any, AnyStr

import orjson

from batchpilot.errors import UserInputError

__all__ = ["MAX_DEPTH", "MAX_LINE_BYTES", "bounded_lines", "check_depth", "parse_json"]

MAX_LINE_BYTES = 64 * 1024 * 1024
"""The longest line read from a JSONL or CSV file (a batch request line is at most 200 MB,
but one request that large is a mistake; images belong in files or URLs)."""

_CHUNK = 1024 * 1024

MAX_DEPTH = 128
"""How deeply objects and lists may nest in one line."""
_NOT_OPENING = bytes(sorted(set(range(256)) - set(b"[{")))


def bounded_lines(stream: IO[AnyStr], name: str, limit: int = MAX_LINE_BYTES) -> Iterator[AnyStr]:
    """The lines of ``stream``; a line longer than ``limit`` bytes (or characters) is refused
    once ``limit`` of it has been read, without holding more of it."""
    number = 0
    while True:
        piece = stream.readline(_CHUNK)
        if not piece:
            return
        number += 1
        if len(piece) < _CHUNK or piece[-1:] in (b"\n", "\n"):
            yield piece
            continue
        pieces = [piece]
        size = len(piece)
        while len(piece) == _CHUNK and piece[-1:] not in (b"\n", "\n"):
            piece = stream.readline(_CHUNK)
            size += len(piece)
            if size > limit:
                raise UserInputError(
                    f"{name}:{number}: the line is longer than {_size(limit)}; split the "
                    "record, or keep large content (images, documents) in files and give "
                    "their paths"
                )
            pieces.append(piece)
        yield pieces[0][:0].join(pieces)


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"


def parse_json(raw: bytes | str, where: str) -> Any:
    """One JSON value, as the JSON standard has it: no NaN or Infinity, no number too large
    for a double, no lone surrogate, no nesting deeper than MAX_DEPTH.

    ``where`` names the place in messages (``rows.jsonl:12``). Raises UserInputError.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error):
            raise _too_deep(where) from None
        value = _standard_library(raw, where)
    check_depth(value, where, raw)
    return value


def _standard_library(raw: bytes | str, where: str) -> Any:
    """What orjson refused: integers past 64 bits are fine; the rest is a clear error with the
    standard library's message."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as error:
        raise UserInputError(
            f"{where}: not valid JSON ({error.msg} at column {error.colno}); fix or remove the line"
        ) from None
    except UnicodeDecodeError as error:
        raise UserInputError(
            f"{where}: not valid UTF-8 text ({error.reason} at byte {error.start}); fix the line"
        ) from None
    except RecursionError:
        raise _too_deep(where) from None
    except _Refused as error:
        raise UserInputError(f"{where}: {error}") from None
    except ValueError:  # an integer of more than 4300 digits
        raise UserInputError(
            f"{where}: a number has too many digits to be read; fix the line"
        ) from None
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise UserInputError(
            f"{where}: a string holds a lone surrogate (a \\ud800-\\udfff escape without its "
            "pair), which is not text; fix the line"
        ) from None
    except RecursionError:
        raise _too_deep(where) from None
    return value


class _Refused(ValueError):
    """A value the JSON standard does not allow, though Python's parser takes it."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number; write null or a finite number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Refused(f"the number {text[:40]} is too large; write a finite number")
    return number


def _too_deep(where: str) -> UserInputError:
    return UserInputError(
        f"{where}: objects and lists nest more than {MAX_DEPTH} levels deep; flatten the record"
    )


def check_depth(value: Any, where: str, raw: bytes | str | None = None) -> None:
    """Refuse ``value`` if it nests deeper than MAX_DEPTH; ``raw`` (its text), when given, lets
    a shallow line pass without walking it."""
    if raw is not None:
        if isinstance(raw, bytes):  # one pass that keeps the opening brackets alone
            brackets = len(raw.translate(None, _NOT_OPENING))
        else:
            brackets = raw.count("[") + raw.count("{")
        if brackets <= MAX_DEPTH:
            return
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        pending.extend((child, depth + 1) for child in children)
