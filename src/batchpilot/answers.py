"""Reading an answer out of a response body: its text or embedding, and its JSON when the
text is a structured answer.

Chat completions carry the answer in `choices[0].message`; the Responses API in `output[]`
items of type `message`, whose `content[]` parts are `output_text` (the text) or `refusal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchpilot.jsontext import loads

__all__ = [
    "Answer",
    "answer_of",
    "object_of",
    "parsed_answer",
    "response_content",
    "token_count",
]


@dataclass(slots=True)
class Answer:
    """What a chat or responses body says: its text, a refusal, and whether it was cut short
    (`truncated`: the token limit) or filtered (`filtered`: a content filter). Made for every
    answer checked or exported: not frozen, which would take three times as long."""

    text: str | None = None
    refusal: str | None = None
    truncated: bool = False
    filtered: bool = False


def answer_of(response: dict[str, Any] | None) -> Answer | None:
    """The answer of a chat completion or a response; None for bodies that carry no message
    (embeddings, moderations, errors)."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if isinstance(choices, list) and choices:
        choice = object_of(choices[0])
        message = object_of(choice.get("message"))
        finish = choice.get("finish_reason")
        content = message.get("content")
        if content is None and isinstance(choice.get("text"), str):
            content = choice["text"]  # legacy completions
        refusal = message.get("refusal")
        return Answer(
            text=content if isinstance(content, str) else None,
            refusal=refusal if isinstance(refusal, str) and refusal else None,
            truncated=finish == "length",
            filtered=finish == "content_filter",
        )
    output = response.get("output")
    if response.get("object") == "response" or isinstance(output, list):
        texts: list[str] = []
        refusals: list[str] = []
        for item in output if isinstance(output, list) else []:
            if not isinstance(item, dict) or item.get("type") != "message":
                continue
            parts = item.get("content")
            for part in parts if isinstance(parts, list) else []:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    refusals.append(part["refusal"])
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return Answer(
            text="".join(texts) if texts else None,
            refusal="".join(refusals) or None,
            truncated=reason == "max_output_tokens",
            filtered=reason == "content_filter",
        )
    return None


def response_content(
    response: dict[str, Any] | None,
) -> tuple[str | None, list[float] | None]:
    """The answer's text (chat, responses, completions) or embedding found in a response body."""
    if not response or not isinstance(response, dict):
        return None, None
    data = response.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        embedding = data[0].get("embedding")
        return None, embedding if isinstance(embedding, list) else None
    answer = answer_of(response)
    return (answer.text if answer is not None else None), None


def parsed_answer(text: str | None) -> dict[str, Any] | list[Any] | None:
    """The answer's text as a JSON object or array; None for free text or no text."""
    if not isinstance(text, str) or text.lstrip()[:1] not in ("{", "["):
        return None  # no object or array can be read from it: free text is common
    try:
        parsed = loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict | list) else None


def token_count(value: Any) -> int:
    """A count of tokens as an answer's usage gives it; 0 for none, or for one that is not a
    count (a provider's odd answer must not stop its batch from being read)."""
    if value.__class__ is int and value >= 0:
        return int(value)
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def object_of(value: Any) -> dict[str, Any]:
    """A part of an answer that should be a JSON object: itself, or an empty one when it is
    not one (a provider's odd answer must not stop its batch from being read)."""
    return value if isinstance(value, dict) else {}
