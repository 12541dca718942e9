"""Anthropic's Messages API on top of the responders: a Messages request becomes the chat body
the responder answers, and its answer becomes a Message (content blocks, stop_reason, usage).
Errors come back in Anthropic's envelope."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from batchpilot.server.faults import CONTENT_KINDS, Fault
from batchpilot.server.responders.base import Responder, ResponderError

__all__ = ["ERROR_TYPES", "anthropic_error", "from_openai_error", "run_message"]

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope for an HTTP status."""
    kind = ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")
    envelope: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is not None:
        envelope["request_id"] = request_id
    return envelope


def from_openai_error(status: int, body: Any, request_id: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error envelope (from the shared parts of the server) in Anthropic's."""
    if isinstance(body, dict) and body.get("type") == "error":
        return body
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return anthropic_error(status, str(message or "error"), request_id)


class _Invalid(Exception):
    pass


def _text_of(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _Invalid(f"{where}: Input should be a valid string or list of text blocks")
    texts = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _Invalid(f"{where}.{index}: Input should be a text block")
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def _part(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise _Invalid(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = str(source.get("url"))
        else:
            raise _Invalid(f"{where}.source: Input tag does not match base64 or url")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind in ("tool_use", "tool_result", "document"):
        return {"type": "text", "text": json.dumps(block, sort_keys=True)}
    raise _Invalid(f"{where}.type: Input tag '{kind}' does not match any expected block type")


def _forced_tool(params: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a request forces (tool_choice {type: tool}), if any."""
    choice = params.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    for tool in params.get("tools") or []:
        if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
            return tool
    raise _Invalid(f"tool_choice.name: no tool named {choice.get('name')!r} in tools")


def chat_body(params: dict[str, Any]) -> dict[str, Any]:
    """The chat body a responder answers for a Messages request; raises _Invalid."""
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model: Field required")
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        raise _Invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _Invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages: Field required (a non-empty list of messages)")
    chat: list[dict[str, Any]] = []
    if params.get("system") is not None:
        chat.append({"role": "system", "content": _text_of(params["system"], "system")})
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            chat.append({"role": message["role"], "content": content})
        elif isinstance(content, list):
            parts = [_part(b, f"{where}.content.{i}") for i, b in enumerate(content)]
            chat.append({"role": message["role"], "content": parts})
        else:
            raise _Invalid(f"{where}.content: Field required")
    body: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens}
    for key in ("temperature", "top_p"):
        if key in params:
            body[key] = params[key]
    if params.get("stop_sequences"):
        body["stop"] = params["stop_sequences"]
    schema = None
    tool = _forced_tool(params)
    if tool is not None:
        schema = tool.get("input_schema")
    else:
        output = (params.get("output_config") or {}).get("format")
        if isinstance(output, dict) and output.get("type") == "json_schema":
            schema = output.get("schema")
    if isinstance(schema, dict):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    return body


def _message(params: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    choice = (answer.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    text = said.get("content") or ""
    finish = choice.get("finish_reason")
    stop = {"length": "max_tokens", "content_filter": "refusal"}.get(str(finish), "end_turn")
    content: list[dict[str, Any]]
    tool = _forced_tool(params)
    if said.get("refusal"):
        content, stop = [{"type": "text", "text": str(said["refusal"])}], "refusal"
    elif tool is not None and stop == "end_turn":
        try:
            arguments = json.loads(text)
        except ValueError:
            arguments = {"text": text}
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        content = [
            {"type": "tool_use", "id": f"toolu_{digest}", "name": tool["name"], "input": arguments}
        ]
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": text}]
    usage = answer.get("usage") or {}
    chat_id = str(answer.get("id") or "")
    return {
        "id": "msg_" + hashlib.sha256(chat_id.encode()).hexdigest()[:24],
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens", 0) or 0),
            "output_tokens": int(usage.get("completion_tokens", 0) or 0),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _apply_content_fault(answer: dict[str, Any], fault: Fault) -> None:
    for choice in answer.get("choices", []):
        message = choice.get("message", {})
        if fault.kind == "refusal":
            message["content"] = None
            message["refusal"] = fault.refusal_text
        elif fault.kind == "schema_violation":
            message["content"] = '{"unexpected": "a valid JSON answer that breaks the schema"}'
        elif fault.kind == "length":
            content = message.get("content") or ""
            message["content"] = content[: max(1, len(content) // 2)]
            choice["finish_reason"] = "length"


def run_message(
    responder: Responder, params: dict[str, Any], content_fault: Fault | None = None
) -> tuple[int, dict[str, Any]]:
    """Answer one Messages request: (HTTP status, Message or Anthropic error envelope)."""
    try:
        answer = responder.chat(chat_body(params))
    except _Invalid as exc:
        return 400, anthropic_error(400, str(exc))
    except ResponderError as exc:
        return exc.status_code, anthropic_error(exc.status_code, exc.message)
    except Exception:
        log.exception("responder %s failed", responder.name)
        return 500, anthropic_error(
            500, "The local responder failed while processing the request; see the server log."
        )
    if content_fault is not None and content_fault.kind in CONTENT_KINDS:
        _apply_content_fault(answer, content_fault)
    return 200, _message(params, answer)
