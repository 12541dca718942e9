"""Streamed answers (`stream: true`) as server-sent events, in the API's chunk and event shapes.

The answer is made whole first and then sent in pieces: chat completions as
`chat.completion.chunk` objects ending in `data: [DONE]` (a last chunk with `usage` when
`stream_options.include_usage` is set), responses as the typed events `response.created` ...
`response.output_text.delta` ... `response.completed`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["chat_events", "response_events"]

JSON = dict[str, Any]

_PIECES = re.compile(r"\s*\S+|\s+")


def _pieces(text: str) -> list[str]:
    return _PIECES.findall(text) or [text]


def _data(payload: JSON) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def chat_events(answer: JSON, body: JSON) -> Iterator[bytes]:
    """The SSE stream of a chat completion."""
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    head = {
        "id": answer.get("id"),
        "object": "chat.completion.chunk",
        "created": answer.get("created"),
        "model": answer.get("model"),
        "system_fingerprint": answer.get("system_fingerprint"),
        "service_tier": answer.get("service_tier"),
    }
    if include_usage:
        head["usage"] = None

    def chunk(index: int, delta: JSON, finish: str | None = None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return _data({**head, "choices": [choice]})

    for choice in answer.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
        for position, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            delta = {
                "index": position,
                "id": call.get("id"),
                "type": "function",
                "function": {"name": function.get("name"), "arguments": ""},
            }
            yield chunk(index, {"tool_calls": [delta]})
            for piece in _pieces(function.get("arguments") or ""):
                argument = {"index": position, "function": {"arguments": piece}}
                yield chunk(index, {"tool_calls": [argument]})
        if message.get("refusal"):
            yield chunk(index, {"refusal": message["refusal"]})
        content = message.get("content")
        logprobs = (choice.get("logprobs") or {}).get("content") or []
        if isinstance(content, str) and content:
            pieces = _pieces(content)
            for number, piece in enumerate(pieces):
                # every token's log probability travels with the first piece
                carried = {"content": logprobs, "refusal": None} if logprobs else None
                yield chunk(index, {"content": piece}, None, carried if number == 0 else None)
        yield chunk(index, {}, choice.get("finish_reason"))
    if include_usage:
        yield _data({**head, "choices": [], "usage": answer.get("usage")})
    yield b"data: [DONE]\n\n"


def response_events(response: JSON, body: JSON) -> Iterator[bytes]:
    """The SSE stream of a response: its lifecycle and output events (`body`, the request,
    adds nothing the response does not already say)."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    pending["completed_at"] = None
    pending["incomplete_details"] = None
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    for output_index, item in enumerate(response.get("output") or []):
        if item.get("type") != "message":
            started = {**item, "status": "in_progress"}
            if item.get("type") == "function_call":
                started["arguments"] = ""
            yield event("response.output_item.added", output_index=output_index, item=started)
            if item.get("type") == "function_call":
                for piece in _pieces(item.get("arguments") or ""):
                    yield event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=output_index,
                        delta=piece,
                    )
                yield event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=output_index,
                    name=item.get("name"),
                    arguments=item.get("arguments"),
                )
            yield event("response.output_item.done", output_index=output_index, item=item)
            continue
        empty = {**item, "status": "in_progress", "content": []}
        yield event("response.output_item.added", output_index=output_index, item=empty)
        for content_index, part in enumerate(item.get("content") or []):
            where = {
                "item_id": item["id"],
                "output_index": output_index,
                "content_index": content_index,
            }
            if part.get("type") == "output_text":
                blank = {**part, "text": "", "logprobs": []}
                yield event("response.content_part.added", **where, part=blank)
                for piece in _pieces(part.get("text") or ""):
                    yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
                text, logprobs = part.get("text"), part.get("logprobs") or []
                yield event("response.output_text.done", **where, text=text, logprobs=logprobs)
            else:
                blank = {**part, "refusal": ""}
                yield event("response.content_part.added", **where, part=blank)
                refusal = part.get("refusal") or ""
                yield event("response.refusal.delta", **where, delta=refusal)
                yield event("response.refusal.done", **where, refusal=refusal)
            yield event("response.content_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=output_index, item=item)
    incomplete = response.get("status") == "incomplete"
    yield event("response.incomplete" if incomplete else "response.completed", response=response)
