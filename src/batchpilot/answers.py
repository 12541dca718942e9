"""Reading an answer out of a response body: its text or embedding, and its JSON when the
text is a structured answer."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parsed_answer", "response_content"]


def response_content(
    response: dict[str, Any] | None,
) -> tuple[str | None, list[float] | None]:
    """The answer's text (chat, responses) or embedding found in a response body."""
    if not response:
        return None, None
    choices = response.get("choices")
    if isinstance(choices, list) and choices:
        message = choices[0].get("message") or {}
        return message.get("content"), None
    data = response.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        embedding = data[0].get("embedding")
        return None, embedding if isinstance(embedding, list) else None
    output = response.get("output_text")
    return (output if isinstance(output, str) else None), None


def parsed_answer(text: str | None) -> dict[str, Any] | list[Any] | None:
    """The answer's text as a JSON object or array; None for free text or no text."""
    if not isinstance(text, str):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict | list) else None
