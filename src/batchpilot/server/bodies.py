"""Parsing and bounding JSON request bodies, for real-time requests and batch lines alike.

A body must parse without exhausting the parser's stack, nest at most `MAX_DEPTH` levels and hold
no string longer than the API's limit, so that nothing later (token counting, responders, hashing)
meets a shape that costs unbounded memory or recursion.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "BodyProblem", "check_body", "parse_json"]

MAX_DEPTH = 128


class BodyProblem(ValueError):
    """A body the API refuses: a message, an error code and the parameter at fault."""

    def __init__(self, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON; a syntax error or nesting too deep for the parser raises BodyProblem."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BodyProblem(
            f"The JSON is nested too deeply; at most {MAX_DEPTH} levels are accepted.",
            "invalid_value",
        ) from None
    except ValueError:
        raise BodyProblem("The JSON could not be parsed.") from None


def _within(value: Any, max_string_chars: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if len(item) > max_string_chars:
                return False
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
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
        param = _param(((prefix,) if prefix else ()) + path) or None
        if isinstance(item, str) and len(item) > max_string_chars:
            raise BodyProblem(
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{max_string_chars}, but got a string with length {len(item)} instead.",
                "string_above_max_length",
                param,
            )
        if isinstance(item, dict | list):
            if len(path) >= MAX_DEPTH:
                raise BodyProblem(
                    f"Invalid '{param}': the JSON is nested too deeply; at most {MAX_DEPTH} "
                    "levels are accepted.",
                    "invalid_value",
                    param,
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, (*path, key)) for key, child in reversed(list(pairs)))
