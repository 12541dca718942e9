"""Parsing and bounding JSON request bodies, for real-time requests and batch lines alike.

A body must parse without exhausting the parser's stack, hold a bounded number of values, nest at
most `MAX_DEPTH` levels and hold no string longer than the API's limit, so that neither parsing nor
anything later (token counting, responders, hashing) costs unbounded memory or recursion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_DEPTH", "BodyProblem", "check_body", "json_object", "parse_json"]

MAX_DEPTH = 128
_END = object()


class BodyProblem(ValueError):
    """A body the API refuses: a message, an error code and the parameter at fault."""

    def __init__(self, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, max_values: int | None = None) -> Any:
    """Parse JSON; a syntax error, nesting too deep for the parser or more than `max_values`
    values raises BodyProblem.

    The values are estimated before parsing from the count of `[`, `{` and `,` (an upper bound:
    those inside strings count too), since a parsed value costs up to twenty times its text.
    """
    if max_values is not None:
        values = raw.count(b"[") + raw.count(b"{") + raw.count(b",")
        if values > max_values:
            raise BodyProblem(
                f"The JSON holds more than {max_values} values (counting each '[', '{{' and "
                "','); split it into smaller requests. (local server)",
                "too_many_values",
            )
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BodyProblem(
            f"The JSON is nested too deeply; at most {MAX_DEPTH} levels are accepted.",
            "invalid_value",
        ) from None
    except ValueError:
        raise BodyProblem("The JSON could not be parsed.") from None


def _too_long(item: str, max_string_chars: int) -> bool:
    # Data URLs (images, audio, files) are bounded by the body size instead.
    return len(item) > max_string_chars and not item.startswith("data:")


def _within(value: Any, max_string_chars: int) -> bool:
    """One pass holding one iterator per open level, so memory grows with depth only."""
    if isinstance(value, str):
        return not _too_long(value, max_string_chars)
    if not isinstance(value, dict | list):
        return True
    stack: list[Iterator[Any]] = [iter(value.values() if isinstance(value, dict) else value)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, str):
            if _too_long(item, max_string_chars):
                return False
        elif isinstance(item, dict | list):
            if len(stack) >= MAX_DEPTH:
                return False
            stack.append(iter(item.values() if isinstance(item, dict) else item))
    return True


def _param(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def check_body(body: Any, max_string_chars: int, prefix: str = "") -> None:
    """Raise BodyProblem naming the first string over `max_string_chars` or level too deep."""
    if _within(body, max_string_chars):
        return
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str) and _too_long(item, max_string_chars):
            param = _param(((prefix,) if prefix else ()) + path) or None
            raise BodyProblem(
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{max_string_chars}, but got a string with length {len(item)} instead.",
                "string_above_max_length",
                param,
            )
        if isinstance(item, dict | list):
            if len(path) >= MAX_DEPTH:
                param = _param(((prefix,) if prefix else ()) + path) or None
                raise BodyProblem(
                    f"Invalid '{param}': the JSON is nested too deeply; at most {MAX_DEPTH} "
                    "levels are accepted.",
                    "invalid_value",
                    param,
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, (*path, key)) for key, child in reversed(list(pairs)))


def json_object(
    raw: bytes,
    max_values: int | None,
    max_string_chars: int,
    *,
    not_object: str,
    unparsable: str | None = None,
) -> dict[str, Any]:
    """A request body that must be a JSON object, parsed and bounded; BodyProblem otherwise,
    saying `not_object` for any other JSON value and, when given, `unparsable` for text that
    does not parse."""
    try:
        body = parse_json(raw, max_values)
    except BodyProblem as problem:
        if unparsable is not None and problem.code is None:
            problem.message = unparsable
        raise
    if not isinstance(body, dict):
        raise BodyProblem(not_object)
    check_body(body, max_string_chars)
    return body
