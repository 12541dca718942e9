"""Checks on request parameters, shared by job files and batch request lines.

A parameter the provider would refuse, or that would be sent as something else (NaN goes out
as null), is a clear error before anything is planned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_OUTPUT_TOKENS", "param_problems"]

MAX_OUTPUT_TOKENS = 10_000_000
"""More output tokens than any model allows; a larger max_tokens is a typo."""

_WHOLE: dict[str, tuple[int, int]] = {
    "max_tokens": (1, MAX_OUTPUT_TOKENS),
    "max_completion_tokens": (1, MAX_OUTPUT_TOKENS),
    "max_output_tokens": (1, MAX_OUTPUT_TOKENS),
    "n": (1, 128),
    "top_logprobs": (0, 20),
    "seed": (-(2**63), 2**63 - 1),
}
_NUMBERS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})


def param_problems(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """What is wrong with ``params`` (a job's params or a request body's parameters), each
    naming the parameter: ``max_tokens must be a whole number from 1 to 10000000 (it is 'lots')``.
    """
    problems: list[str] = []
    for name, value in params.items():
        where = f"{prefix}{name}"
        if name in _WHOLE and value is not None:
            low, high = _WHOLE[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(
                    f"{where} must be a whole number from {low} to {high} (it is {_show(value)})"
                )
                continue
        if name in _NUMBERS and value is not None and not _real(value):
            problems.append(f"{where} must be a number (it is {_show(value)})")
            continue
        bad = _non_finite(value)
        if bad is not None:
            problems.append(
                f"{where}{bad} is NaN or infinite, which JSON cannot carry (it would be sent as "
                "null); give a finite number"
            )
    return problems


def _non_finite(value: Any, path: str = "", depth: int = 0) -> str | None:
    """The path (``""`` for the value itself, ``.a[2]`` inside it) of a NaN or infinite number."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if depth > 64:
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_finite(item, f"{path}.{key}", depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            found = _non_finite(item, f"{path}[{position}]", depth + 1)
            if found is not None:
                return found
    return None


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
