"""The Responses API on top of any responder: a `/v1/responses` body becomes a chat body, and
the chat answer becomes a `response` object in the API's raw shape.

`input` (a string or a list of messages), `instructions`, `text.format` (json_schema,
json_object, text), `max_output_tokens`, `tools` (function tools), `tool_choice`,
`top_logprobs`, `temperature` and `top_p` are carried over; a chat answer cut at its token limit
becomes `status: incomplete` with `incomplete_details.reason: max_output_tokens`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchpilot.server.responders.base import ResponderError

__all__ = ["chat_body_of", "response_of"]

JSON = dict[str, Any]

_ROLES = ("user", "assistant", "system", "developer")
_PASSED = ("model", "temperature", "top_p", "parallel_tool_calls", "service_tier", "seed", "user")


def _invalid(message: str, param: str, code: str = "invalid_value") -> ResponderError:
    return ResponderError(message, param=param, code=code)


def _content_of(content: Any, param: str) -> str | list[JSON]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(f"Invalid type for '{param}': expected a string or an array.", param)
    parts: list[JSON] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "input_image":
            url = part.get("image_url") or part.get("file_id") or ""
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        else:
            raise _invalid(
                f"Invalid value: {kind!r}. Supported values are: 'input_text', "
                "'input_image' and 'output_text'.",
                f"{param}[{index}].type",
            )
    return parts


def _messages_of(body: JSON) -> list[JSON]:
    messages: list[JSON] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "developer", "content": instructions})
    items = body.get("input")
    if items is None:
        raise _invalid(
            "Missing required parameter: 'input'.", "input", code="missing_required_parameter"
        )
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _invalid("Invalid 'input': expected a string or a non-empty array.", "input")
    for index, item in enumerate(items):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise _invalid(
                f"Invalid type for '{param}': expected an object.", param, "invalid_type"
            )
        kind = item.get("type", "message")
        if kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            messages.append(
                {"role": "tool", "tool_call_id": str(item.get("call_id")), "content": text}
            )
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id")),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                supported = ", ".join(f"'{r}'" for r in _ROLES)
                raise _invalid(
                    f"Invalid value: {role!r}. Supported values are: {supported}.",
                    f"{param}.role",
                )
            content = _content_of(item.get("content"), f"{param}.content")
            messages.append({"role": role, "content": content})
        else:
            raise _invalid(f"Invalid value: {kind!r}.", f"{param}.type")
    return messages


def _response_format_of(text: Any) -> JSON | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _invalid("Invalid type for 'text': expected an object.", "text", "invalid_type")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _invalid("Invalid type for 'text.format'.", "text.format", "invalid_type")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise _invalid(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and "
            "'json_schema'.",
            "text.format.type",
        )
    if not isinstance(fmt.get("name"), str):
        raise _invalid(
            "Missing required parameter: 'text.format.name'.",
            "text.format.name",
            "missing_required_parameter",
        )
    spec = {key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt}
    return {"type": "json_schema", "json_schema": spec}


def _tools_of(tools: Any) -> list[JSON] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    converted: list[JSON] = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _invalid(
                "Only function tools are supported by the local server.", f"tools[{index}].type"
            )
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice_of(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def chat_body_of(body: JSON) -> JSON:
    """The chat-completions body that asks what a `/v1/responses` body asks."""
    if not isinstance(body, dict):
        raise ResponderError("The request body must be a JSON object.")
    chat: JSON = {key: body[key] for key in _PASSED if body.get(key) is not None}
    chat["messages"] = _messages_of(body)
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    if isinstance(body.get("reasoning"), dict) and body["reasoning"].get("effort") is not None:
        chat["reasoning_effort"] = body["reasoning"]["effort"]
    response_format = _response_format_of(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    tools = _tools_of(body.get("tools"))
    if tools:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice_of(body["tool_choice"])
    if body.get("top_logprobs") is not None:
        chat["logprobs"] = True
        chat["top_logprobs"] = body["top_logprobs"]
    return chat


def _tool_echo(tool: JSON) -> JSON:
    """A function tool as a response lists it: every field present, `strict` true by default."""
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict", True),
    }


def _item_id(prefix: str, seed: str, index: int) -> str:
    return prefix + hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:40]


def _logprobs_of(choice: JSON) -> list[JSON]:
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [
        {
            "token": entry["token"],
            "logprob": entry["logprob"],
            "bytes": entry.get("bytes") or [],
            "top_logprobs": [
                {"token": t["token"], "logprob": t["logprob"], "bytes": t.get("bytes") or []}
                for t in entry.get("top_logprobs") or []
            ],
        }
        for entry in content or []
    ]


def _usage_of(usage: Any) -> JSON:
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def response_of(answer: JSON, body: JSON, created_at: float) -> JSON:
    """The `response` object for a chat answer to `chat_body_of(body)`."""
    seed = str(answer.get("id") or "")
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    status = "incomplete" if finish in ("length", "content_filter") else "completed"
    output: list[JSON] = []
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        output.append(
            {
                "type": "function_call",
                "id": _item_id("fc_", seed, index),
                "call_id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments") or "{}",
                "status": "completed",
            }
        )
    parts: list[JSON] = []
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    elif isinstance(message.get("content"), str):
        parts.append(
            {
                "type": "output_text",
                "text": message["content"],
                "annotations": [],
                "logprobs": _logprobs_of(choice),
            }
        )
    if parts:
        output.append(
            {
                "type": "message",
                "id": _item_id("msg_", seed, 0),
                "status": status,
                "role": "assistant",
                "content": parts,
            }
        )
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish or "")
    return {
        "id": "resp_" + hashlib.sha256(seed.encode()).hexdigest()[:48],
        "object": "response",
        "created_at": int(created_at),
        "status": status,
        "completed_at": int(created_at),
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": answer.get("model") or body.get("model"),
        "output": output,
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": None,
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "service_tier": answer.get("service_tier") or "default",
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": (text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_tool_echo(tool) for tool in body.get("tools") or []],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _usage_of(answer.get("usage")),
        "user": None,
        "metadata": body.get("metadata") or {},
    }
