"""The shape of a request body, checked before it is counted, priced or sent.

Bodies from a job's templates always fit; bodies given as they are (a batch requests file, a
task's requests) may not, and a wrong one is a lint error naming its line, not a crash.
"""

from __future__ import annotations

from typing import Any

from batchpilot.jsontypes import json_type_name
from batchpilot.spec.params import param_problems

__all__ = ["body_problem"]


def body_problem(endpoint: str, body: dict[str, Any]) -> str | None:
    """What is wrong with ``body`` for ``endpoint``, or None when it can be sent."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return "the body needs a model name (a string)"
    if endpoint == "/v1/chat/completions":
        problem = _chat(body)
    elif endpoint == "/v1/responses":
        problem = _responses(body)
    else:
        problem = _embeddings(body)
    if problem is not None:
        return problem
    problems = param_problems(
        {key: value for key, value in body.items() if key not in ("messages", "input")}
    )
    return problems[0] if problems else None


def _chat(body: dict[str, Any]) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return f"messages must be a non-empty array of messages (it is {json_type_name(messages)})"
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict):
            return (
                f"{where} must be an object with role and content (it is {json_type_name(message)})"
            )
        if not isinstance(message.get("role"), str):
            return f"{where}.role must be a string"
        problem = _content(message.get("content"), f"{where}.content", optional=True)
        if problem is not None:
            return problem
    return None


def _responses(body: dict[str, Any]) -> str | None:
    value = body.get("input")
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not value:
        return (
            f"input must be a string or a non-empty array of items (it is {json_type_name(value)})"
        )
    for number, item in enumerate(value):
        where = f"input[{number}]"
        if not isinstance(item, dict):
            return f"{where} must be an object (it is {json_type_name(item)})"
        if "content" in item:
            problem = _content(item["content"], f"{where}.content", optional=False)
            if problem is not None:
                return problem
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return f"instructions must be a string (it is {json_type_name(instructions)})"
    return None


def _content(content: Any, where: str, *, optional: bool) -> str | None:
    if isinstance(content, str) or (content is None and optional):
        return None
    if not isinstance(content, list):
        return f"{where} must be a string or an array of parts (it is {json_type_name(content)})"
    for number, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return f"{where}[{number}] must be an object with a type (it is {json_type_name(part)})"
        if "text" in part and not isinstance(part["text"], str):
            return f"{where}[{number}].text must be a string (it is {json_type_name(part['text'])})"
    return None


def _embeddings(body: dict[str, Any]) -> str | None:
    value = body.get("input")
    if isinstance(value, str):
        return None
    expected = "a string, an array of strings, or token ids (an array of integers or of arrays)"
    if not isinstance(value, list) or not value:
        return f"input must be {expected} (it is {json_type_name(value)})"
    if all(isinstance(item, str) for item in value) or all(_tokens(item) for item in value):
        return None
    if all(isinstance(item, list) and item and _tokens_list(item) for item in value):
        return None
    return f"input must be {expected}"


def _tokens(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and item >= 0


def _tokens_list(items: list[Any]) -> bool:
    return all(_tokens(item) for item in items)
