"""Gemini's generateContent on top of the responders: a GenerateContentRequest becomes the chat
body the responder answers, and its answer becomes a GenerateContentResponse (candidates,
finishReason, usageMetadata). Errors come back in Google's envelope.

Requests are read in the REST API's camelCase, with the snake_case spellings the API also takes.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from batchpilot.server.faults import CONTENT_KINDS, Fault
from batchpilot.server.responders.base import Responder, ResponderError

__all__ = [
    "GRPC_CODES",
    "STATUS_NAMES",
    "chat_body",
    "from_openai_error",
    "gemini_error",
    "rpc_status",
    "run_generate",
]

log = logging.getLogger(__name__)

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
GRPC_CODES = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ABORTED": 10,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "NOT_IMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}


def _status_name(status: int) -> str:
    return STATUS_NAMES.get(status) or ("INVALID_ARGUMENT" if status < 500 else "INTERNAL")


def gemini_error(status: int, message: str) -> dict[str, Any]:
    """Google's error envelope for an HTTP status."""
    return {"error": {"code": status, "message": message, "status": _status_name(status)}}


def rpc_status(status: int, message: str) -> dict[str, Any]:
    """A google.rpc.Status (a batch's per-request error): the gRPC code of an HTTP status."""
    return {"code": GRPC_CODES.get(_status_name(status), 2), "message": message}


def from_openai_error(status: int, body: Any) -> dict[str, Any]:
    """An OpenAI-shaped error envelope (from the shared parts of the server) in Google's."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("status"), str):
        return {"error": error}
    message = error.get("message") if isinstance(error, dict) else None
    return gemini_error(status, str(message or "error"))


class _Invalid(Exception):
    pass


def _get(data: dict[str, Any], camel: str, snake: str) -> Any:
    return data[camel] if camel in data else data.get(snake)


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _Invalid(f"{where}: Invalid value (a Part object is expected)")
    if isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    inline = _get(part, "inlineData", "inline_data")
    if isinstance(inline, dict):
        mime = _get(inline, "mimeType", "mime_type") or "application/octet-stream"
        url = f"data:{mime};base64,{inline.get('data') or ''}"
        return {"type": "image_url", "image_url": {"url": url}}
    data = _get(part, "fileData", "file_data")
    if isinstance(data, dict):
        url = str(_get(data, "fileUri", "file_uri") or "")
        return {"type": "image_url", "image_url": {"url": url}}
    raise _Invalid(f"{where}: this part kind is not supported by the local server")


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise _Invalid(f"{where}: Invalid value (a Content with parts is expected)")
    return "\n".join(str(p.get("text", "")) for p in content["parts"] if isinstance(p, dict))


def _json_schema(schema: Any) -> Any:
    """An OpenAPI-style `responseSchema` (types in capitals) as JSON schema."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    found = {k: _json_schema(v) for k, v in schema.items()}
    if isinstance(found.get("type"), str):
        found["type"] = found["type"].lower()
    if found.pop("nullable", False) and isinstance(found.get("type"), str):
        found["type"] = [found["type"], "null"]
    found.pop("propertyOrdering", None)
    return found


def chat_body(request: dict[str, Any], model: str) -> dict[str, Any]:
    """The chat body a responder answers for a GenerateContentRequest; raises _Invalid."""
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    chat: list[dict[str, Any]] = []
    system = _get(request, "systemInstruction", "system_instruction")
    if system is not None:
        chat.append({"role": "system", "content": _text_of(system, "system_instruction")})
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
            raise _Invalid(
                f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty"
            )
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise _Invalid(
                f"* GenerateContentRequest.{where}.role: Please use a valid role: user, model."
            )
        parts = [_part(p, f"{where}.parts[{i}]") for i, p in enumerate(content["parts"])]
        said = "assistant" if role == "model" else "user"
        if all(p["type"] == "text" for p in parts):
            chat.append({"role": said, "content": "\n".join(p["text"] for p in parts)})
        else:
            chat.append({"role": said, "content": parts})
    body: dict[str, Any] = {"model": model, "messages": chat}
    config = _get(request, "generationConfig", "generation_config") or {}
    if not isinstance(config, dict):
        raise _Invalid("* GenerateContentRequest.generation_config: Invalid value")
    limit = _get(config, "maxOutputTokens", "max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _Invalid(
                "* GenerateContentRequest.generation_config.max_output_tokens: Invalid value"
            )
        body["max_tokens"] = limit
    for camel, snake, key in (
        ("temperature", "temperature", "temperature"),
        ("topP", "top_p", "top_p"),
    ):
        value = _get(config, camel, snake)
        if value is not None:
            body[key] = value
    stop = _get(config, "stopSequences", "stop_sequences")
    if stop:
        body["stop"] = stop
    schema = _get(config, "responseJsonSchema", "response_json_schema")
    if schema is None:
        schema = _json_schema(_get(config, "responseSchema", "response_schema"))
    mime = _get(config, "responseMimeType", "response_mime_type")
    if isinstance(schema, dict):
        if mime != "application/json":
            raise _Invalid(
                "* GenerateContentRequest.generation_config.response_mime_type: a response "
                "schema needs response_mime_type application/json"
            )
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    elif mime == "application/json":
        body["response_format"] = {"type": "json_object"}
    return body


def _response(model: str, answer: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    choice = (answer.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    text = str(said.get("content") or "")
    finish = {"length": "MAX_TOKENS", "content_filter": "SAFETY"}.get(
        str(choice.get("finish_reason")), "STOP"
    )
    if said.get("refusal") or (fault is not None and fault.kind == "refusal"):
        finish = "SAFETY"
    elif fault is not None and fault.kind == "schema_violation":
        text = '{"unexpected": "a valid JSON answer that breaks the schema"}'
    elif fault is not None and fault.kind == "length":
        text, finish = text[: max(1, len(text) // 2)], "MAX_TOKENS"
    candidate: dict[str, Any] = {"index": 0, "finishReason": finish}
    if finish == "SAFETY":
        candidate["safetyRatings"] = [
            {
                "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                "probability": "HIGH",
                "blocked": True,
            }
        ]
    else:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    usage = answer.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    output = int(usage.get("completion_tokens", 0) or 0) if finish != "SAFETY" else 0
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0)
    metadata: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output,
    }
    if cached:
        metadata["cachedContentTokenCount"] = cached
    chat_id = str(answer.get("id") or "")
    return {
        "candidates": [candidate],
        "usageMetadata": metadata,
        "modelVersion": model,
        "responseId": hashlib.sha256(chat_id.encode()).hexdigest()[:22],
    }


def run_generate(
    responder: Responder, body: dict[str, Any], content_fault: Fault | None = None
) -> tuple[int, dict[str, Any]]:
    """Answer one Gemini request (`body`: the request with the bare model name under
    `model`): (HTTP status, GenerateContentResponse or Google's error envelope)."""
    model = str(body.get("model") or "").removeprefix("models/")
    request = {k: v for k, v in body.items() if k != "model"}
    try:
        answer = responder.chat(chat_body(request, model))
    except _Invalid as exc:
        return 400, gemini_error(400, f"Invalid JSON payload received. {exc}")
    except ResponderError as exc:
        return exc.status_code, gemini_error(exc.status_code, exc.message)
    except Exception:
        log.exception("responder %s failed", responder.name)
        return 500, gemini_error(
            500, "The local responder failed while processing the request; see the server log."
        )
    fault = (
        content_fault if content_fault is not None and content_fault.kind in CONTENT_KINDS else None
    )
    return 200, _response(model, answer, fault)
