"""Bodies and answers between our shapes and Gemini's generateContent (no SDK import here).

A request planned for `/v1/chat/completions` (the same job file, another provider) becomes a
GenerateContentRequest: system messages become the system instruction, assistant turns the
`model` role, image URLs inline data (a data URL) or file data, `max_tokens` the maximum output
tokens, a JSON-schema `response_format` a response JSON schema with the JSON MIME type. It is
built in two spellings: the SDK's (`contents` and a `config`, snake_case, image bytes decoded)
and the REST API's (camelCase, as the lines of a batch file are written).

A GenerateContentResponse (read in the SDK's snake_case) becomes a chat completion again, so
that everything past this edge reads one shape: finish reasons MAX_TOKENS and SAFETY (and the
other blocks) become `length` and `content_filter`, a blocked prompt a refusal, and the usage
(cached and thinking tokens included) the chat completion's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
from typing import Any

from batchpilot.answers import object_of, token_count
from batchpilot.errors import UserInputError
from batchpilot.providers.capabilities import GEMINI

__all__ = [
    "CAPABILITIES",
    "CHAT",
    "GRPC_STATUS",
    "chat_completion",
    "request_parts",
    "rest_request",
]

CHAT = "/v1/chat/completions"
CAPABILITIES = GEMINI

GRPC_STATUS = {1: 499, 3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 10: 409, 13: 500, 14: 503, 16: 401}
"""The HTTP status of a google.rpc.Status code (a batch request's error)."""

_BLOCKED = {
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "LANGUAGE",
    "MODEL_ARMOR",
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _part(part: Any, rest: bool) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise UserInputError(f"a message part is not an object: {part!r}"[:200])
    if part.get("type") == "text":
        return {"text": str(part.get("text", ""))}
    if part.get("type") != "image_url":
        raise UserInputError(f"the Gemini provider cannot send a {part.get('type')!r} part")
    url = str((part.get("image_url") or {}).get("url", ""))
    if url.startswith("data:") and ";base64," in url:
        mime, data = url.removeprefix("data:").split(";base64,", 1)
        if rest:
            return {"inlineData": {"mimeType": mime, "data": data}}
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise UserInputError("an image's data URL holds no valid base64") from None
        return {"inline_data": {"mime_type": mime, "data": raw}}
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
    if rest:
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    return {"file_data": {"mime_type": mime, "file_uri": url}}


def _check(endpoint: str) -> None:
    if endpoint != CHAT:
        raise UserInputError(f"the Gemini provider serves {CHAT} requests, not {endpoint}")


def _pieces(body: dict[str, Any], rest: bool) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.append(_text(content))
            continue
        said = "model" if role == "assistant" else "user"
        if isinstance(content, list):
            parts = [_part(p, rest) for p in content]
        else:
            parts = [{"text": str(content or "")}]
        contents.append({"role": said, "parts": parts})
    return system, contents


def _schema(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        return schema
    return None


def request_parts(
    body: dict[str, Any], endpoint: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The SDK's `contents` and `config` (snake_case) for a body planned for `endpoint`."""
    _check(endpoint)
    system, contents = _pieces(body, rest=False)
    config: dict[str, Any] = {}
    if system:
        config["system_instruction"] = "\n\n".join(system)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        config["max_output_tokens"] = int(limit)
    for key in ("temperature", "top_p", "seed"):
        if body.get(key) is not None:
            config[key] = body[key]
    stop = body.get("stop")
    if stop:
        config["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    schema = _schema(body)
    if schema is not None:
        config["response_mime_type"] = "application/json"
        config["response_json_schema"] = schema
    elif (body.get("response_format") or {}).get("type") == "json_object":
        config["response_mime_type"] = "application/json"
    return contents, config


_REST_NAMES = {
    "max_output_tokens": "maxOutputTokens",
    "top_p": "topP",
    "stop_sequences": "stopSequences",
    "response_mime_type": "responseMimeType",
    "response_json_schema": "responseJsonSchema",
}


def rest_request(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The REST API's GenerateContentRequest (camelCase), as a batch file's line holds it."""
    _, config = request_parts({**body, "messages": []}, endpoint)
    system, contents = _pieces(body, rest=True)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config.pop("system_instruction", None)
    if config:
        request["generationConfig"] = {_REST_NAMES.get(k, k): v for k, v in config.items()}
    return request


def _get(data: Any, snake: str, camel: str) -> Any:
    if not isinstance(data, dict):
        return None
    return data[snake] if snake in data else data.get(camel)


def chat_completion(response: Any, model: str | None) -> dict[str, Any]:
    """A GenerateContentResponse (the SDK's snake_case or the REST API's camelCase) as the chat
    completion a chat-planned request expects."""
    response = object_of(response)
    candidates = response.get("candidates")
    if not isinstance(candidates, list):
        candidates = []
    candidate = object_of(candidates[0]) if candidates else {}
    parts = object_of(candidate.get("content")).get("parts")
    if not isinstance(parts, list):
        parts = []
    text = "".join(
        str(p.get("text", "")) for p in parts if isinstance(p, dict) and not p.get("thought")
    )
    reason = str(_get(candidate, "finish_reason", "finishReason") or "STOP")
    refusal = None
    if not candidates:
        feedback = _get(response, "prompt_feedback", "promptFeedback")
        blocked = _get(feedback, "block_reason", "blockReason") or "OTHER"
        refusal, finish = f"the prompt was blocked (block reason {blocked})", "content_filter"
    elif reason in _BLOCKED:
        refusal, finish = f"the answer was blocked (finish reason {reason})", "content_filter"
    elif reason == "MAX_TOKENS":
        finish = "length"
    else:
        finish = "stop"
    usage = _get(response, "usage_metadata", "usageMetadata") or {}
    prompt = token_count(_get(usage, "prompt_token_count", "promptTokenCount"))
    output = token_count(_get(usage, "candidates_token_count", "candidatesTokenCount"))
    output += token_count(_get(usage, "thoughts_token_count", "thoughtsTokenCount"))
    cached = token_count(_get(usage, "cached_content_token_count", "cachedContentTokenCount"))
    answer_id = _get(response, "response_id", "responseId")
    if not answer_id:
        answer_id = hashlib.sha256(text.encode()).hexdigest()[:24]
    return {
        "id": f"gemini-{answer_id}",
        "object": "chat.completion",
        "model": _get(response, "model_version", "modelVersion") or model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None if refusal else text,
                    "refusal": refusal,
                },
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }
