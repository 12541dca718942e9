"""Reading JSON text: as orjson reads it, and what only Python's `json` reads as Python does."""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["loads"]


def loads(text: str | bytes) -> Any:
    """The value JSON text holds: orjson's reading, or Python's where orjson refuses (NaN,
    Infinity, integers past 64 bits); Python's error (a `ValueError`) where neither reads it."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
