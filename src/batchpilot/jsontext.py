"""Reading JSON text: as orjson reads it, and what only Python's `json` reads as Python does."""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["MAX_NESTING", "few_brackets", "loads", "nesting_within"]

MAX_NESTING = 200
"""The most levels of arrays and objects a value read from an answer may nest: far past any
real answer, and short of what every writer and reader of the store takes (orjson writes 255
levels at most, Python's `json` about a thousand)."""


def loads(text: str | bytes) -> Any:
    """The value JSON text holds: orjson's reading, or Python's where orjson refuses (NaN,
    Infinity, integers past 64 bits); a `ValueError` where neither reads it, and for text that
    nests more than `MAX_NESTING` levels (a model caught repeating `[` writes such text)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(text)
        except RecursionError:
            raise ValueError("JSON nested too deeply to read") from None
    if not nesting_within(text, value):
        raise ValueError(f"JSON nested more than {MAX_NESTING} levels deep")
    return value


def nesting_within(text: str | bytes, value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether `value`, read from `text`, nests at most `limit` levels of arrays and objects
    (text with fewer opening brackets than that, nearly all, is not walked)."""
    if few_brackets(text, limit):
        return True
    containers = (dict, list)
    found = [(value, 1)] if value.__class__ in containers else []
    while found:
        item, depth = found.pop()
        if depth > limit:
            return False
        inner = item.values() if item.__class__ is dict else item
        found += [(part, depth + 1) for part in inner if part.__class__ in containers]
    return True


def few_brackets(text: str | bytes, limit: int = MAX_NESTING) -> bool:
    """Whether `text` opens at most `limit` arrays and objects, so that nothing read from it
    can nest deeper (counted in C, without reading it)."""
    if isinstance(text, str):
        return text.count("[") + text.count("{") <= limit
    return text.count(b"[") + text.count(b"{") <= limit
