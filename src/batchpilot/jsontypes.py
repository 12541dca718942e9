"""How to name a JSON value's type in a message, the way the API and a JSON user say it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["json_type_name"]


def json_type_name(value: Any) -> str:
    """`null`, `a boolean`, `a number`, `a string`, `an array`, `an object` (else the class)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
