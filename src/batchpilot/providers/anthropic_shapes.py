"""Bodies and answers between our shapes and Anthropic's Messages API.

A request planned for `/v1/messages` goes out as it is and its answer comes back as a Message.
A request planned for `/v1/chat/completions` (the same job file, another provider) becomes a
Messages request here, and its Message becomes a chat completion again, so that everything past
this edge reads one shape: a system message becomes `system`, image URLs become image blocks,
`max_tokens` (required by Anthropic) comes from the body or DEFAULT_MAX_TOKENS, a JSON-schema
`response_format` becomes `output_config.format`, `max_tokens` and `refusal` stop reasons
become the finish reasons `length` and `content_filter`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from batchpilot.answers import object_of, token_count
from batchpilot.errors import UserInputError

__all__ = [
    "CHAT",
    "DEFAULT_MAX_TOKENS",
    "MESSAGES",
    "chat_completion",
    "messages_params",
    "rate_limit_headers",
    "result_line",
]

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
DEFAULT_MAX_TOKENS = 4096

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
_FINISH |= {"refusal": "content_filter", "tool_use": "tool_calls", "pause_turn": "length"}
_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _block(part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise UserInputError(f"a message part is not an object: {part!r}"[:200])
    if part.get("type") == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if part.get("type") == "image_url":
        url = str((part.get("image_url") or {}).get("url", ""))
        if url.startswith("data:") and ";base64," in url:
            media, data = url.removeprefix("data:").split(";base64,", 1)
            return {
                "type": "image",
                "source": {"type": "base64", "media_type": media, "data": data},
            }
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise UserInputError(f"the Anthropic provider cannot send a {part.get('type')!r} message part")


def messages_params(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The Messages request for a body planned for `endpoint`."""
    if endpoint == MESSAGES:
        return body
    if endpoint != CHAT:
        raise UserInputError(
            f"the Anthropic provider serves {MESSAGES} and {CHAT} requests, not {endpoint}"
        )
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.append(_text(content))
        elif isinstance(content, list):
            messages.append({"role": role, "content": [_block(p) for p in content]})
        else:
            messages.append({"role": role, "content": str(content or "")})
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    params: dict[str, Any] = {"model": body.get("model"), "max_tokens": limit}
    if system:
        params["system"] = "\n\n".join(system)
    params["messages"] = messages
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            params[key] = body[key]
    stop = body.get("stop")
    if stop:
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        params["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    return params


def chat_completion(message: Any) -> dict[str, Any]:
    """A Message as the chat completion a chat-planned request expects."""
    message = object_of(message)
    blocks = message.get("content")
    if not isinstance(blocks, list):
        blocks = []
    text = "".join(
        str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    )
    stop = message.get("stop_reason")
    finish = _FINISH.get(str(stop), "stop")
    usage = object_of(message.get("usage"))
    read = token_count(usage.get("cache_read_input_tokens"))
    written = token_count(usage.get("cache_creation_input_tokens"))
    prompt = token_count(usage.get("input_tokens")) + read + written
    output = token_count(usage.get("output_tokens"))
    refused = stop == "refusal"
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None if refused else text,
                    "refusal": text if refused else None,
                },
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
        },
    }


def error_status(error: Any) -> int:
    """The HTTP status an Anthropic error envelope stands for."""
    inner = error.get("error") if isinstance(error, dict) else None
    kind = inner.get("type") if isinstance(inner, dict) else None
    return _STATUS.get(str(kind), 500)


def result_line(item: Any, endpoint: str) -> tuple[bool, dict[str, Any]]:
    """One line of a batch's results in our result shape, and whether it is an answer (True)
    or an error line."""
    item = object_of(item)
    custom_id = item.get("custom_id")
    result = object_of(item.get("result"))
    kind = result.get("type")
    if kind == "succeeded":
        message = object_of(result.get("message"))
        body = chat_completion(message) if endpoint == CHAT else message
        response = {"status_code": 200, "body": body}
        return True, {"custom_id": custom_id, "response": response, "error": None}
    if kind == "errored":
        error = result.get("error") or {}
        response = {"status_code": error_status(error), "body": error}
        return False, {"custom_id": custom_id, "response": response, "error": None}
    code, what = ("batch_expired", "expired") if kind == "expired" else ("batch_cancelled", kind)
    error = {"code": code, "message": f"The request was not run: the batch {what}."}
    return False, {"custom_id": custom_id, "response": None, "error": error}


def rate_limit_headers(headers: Mapping[str, str], now: float | None = None) -> dict[str, str]:
    """The headers with Anthropic's `anthropic-ratelimit-{requests,tokens}-*` also under the
    `x-ratelimit-*` names the real-time lane reads (a reset time becomes seconds from now);
    input tokens stand for tokens where the total is not given."""
    found = {k.lower(): v for k, v in headers.items()}
    moment = time.time() if now is None else now
    for kind, sources in (("requests", ("requests",)), ("tokens", ("tokens", "input-tokens"))):
        for source in sources:
            prefix = f"anthropic-ratelimit-{source}-"
            if prefix + "limit" not in found:
                continue
            for part in ("limit", "remaining", "reset"):
                value = found.get(prefix + part)
                if value is None or f"x-ratelimit-{part}-{kind}" in found:
                    continue
                if part == "reset":
                    try:
                        at = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                    except ValueError:
                        pass
                    else:
                        value = f"{max(0.0, at - moment):.3f}s"
                found[f"x-ratelimit-{part}-{kind}"] = value
            break
    return found
