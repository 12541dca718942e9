"""Checks on request parameters, shared by job files and batch request lines.

A parameter the provider would refuse, or that would be sent as something else (NaN goes out
as null), is a clear error before anything is planned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from batchpilot.jsontypes import json_type_name

__all__ = ["MAX_OUTPUT_TOKENS", "param_problems"]

MAX_OUTPUT_TOKENS = 10_000_000
"""More output tokens than any model allows; a larger max_tokens is a typo."""

_WHOLE: dict[str, tuple[int, int]] = {
    "max_tokens": (1, MAX_OUTPUT_TOKENS),
    "max_completion_tokens": (1, MAX_OUTPUT_TOKENS),
    "max_output_tokens": (1, MAX_OUTPUT_TOKENS),
}
_NUMBERS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})
_CHOICES: dict[str, tuple[str, ...]] = {
    "reasoning_effort": ("none", "minimal", "low", "medium", "high", "xhigh"),
}


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
        if name in _CHOICES and value is not None and value not in _CHOICES[name]:
            problems.append(
                f"{where} must be one of {', '.join(_CHOICES[name])} (it is {_show(value)})"
            )
            continue
        if name in _NUMBERS and value is not None and not _real(value):
            problems.append(f"{where} must be a number (it is {_show(value)})")
            continue
        shape = _shape_problem(name, value)
        if shape is not None:
            problems.append(f"{prefix}{shape}")
            continue
        bad = _non_finite(value)
        if bad is not None:
            problems.append(
                f"{where}{bad} is NaN or infinite, which JSON cannot carry (it would be sent as "
                "null); give a finite number"
            )
    return problems


def _shape_problem(name: str, value: Any) -> str | None:
    """Where the objects the planner reads (tools, response formats) are not objects."""
    if value is None:
        return None
    if name in ("tools", "functions"):
        if not isinstance(value, list):
            return f"{name} must be a list of tool objects (it is {json_type_name(value)})"
        for number, tool in enumerate(value):
            where = f"{name}[{number}]"
            if not isinstance(tool, dict):
                return f"{where} must be an object (it is {json_type_name(tool)})"
            function = tool.get("function", tool) if name == "tools" else tool
            problem = _function_problem(
                function, f"{where}.function" if function is not tool else where
            )
            if problem is not None:
                return problem
    elif name == "response_format":
        return _objects(value, name, ("json_schema", "schema"))
    elif name == "text":
        return _objects(value, name, ("format", "schema"))
    return None


def _objects(value: Any, where: str, path: tuple[str, ...]) -> str | None:
    """``value`` and each object along ``path`` inside it must be objects (when given)."""
    for key in (None, *path):
        if key is not None:
            if key not in value or value[key] is None:
                return None
            value, where = value[key], f"{where}.{key}"
        if not isinstance(value, dict):
            return f"{where} must be an object (it is {json_type_name(value)})"
    return None


def _function_problem(function: Any, where: str) -> str | None:
    if not isinstance(function, dict):
        return f"{where} must be an object (it is {json_type_name(function)})"
    for key in ("name", "description"):
        if function.get(key) is not None and not isinstance(function[key], str):
            return f"{where}.{key} must be a string"
    problem = _objects(function, where, ("parameters", "properties"))
    if problem is not None:
        return problem
    properties = (function.get("parameters") or {}).get("properties") or {}
    for pname, prop in properties.items():
        at = f"{where}.parameters.properties.{pname}"
        if not isinstance(prop, dict):
            return f"{at} must be an object (it is {json_type_name(prop)})"
        if prop.get("description") is not None and not isinstance(prop["description"], str):
            return f"{at}.description must be a string"
        if "enum" in prop and not isinstance(prop["enum"], list):
            return f"{at}.enum must be a list"
    return None


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
