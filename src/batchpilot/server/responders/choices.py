"""Parts of a chat answer beyond its text, in the API's shape: the synthetic responder's tool
calls for the request's `tools` and token log probabilities for `logprobs` / `top_logprobs`
(derived from a seed, so that the same request always gets the same answer), and tool calls a
model makes through a constrained answer when `tool_choice` demands one."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from batchpilot.server.responders.base import ResponderError
from batchpilot.server.schema_instance import instance_for_schema
from batchpilot.tokens import encoding_name_for_model, get_encoding

__all__ = [
    "forced_tool_schema",
    "logprobs_for",
    "requested_logprobs",
    "tool_call_answer",
    "tool_calls_for",
]

JSON = dict[str, Any]

_EMPTY_PARAMETERS: JSON = {"type": "object", "properties": {}}


def _fraction(seed: str) -> float:
    return int(hashlib.sha256(seed.encode()).hexdigest()[:12], 16) / float(16**12)


def _functions(tools: Any) -> list[JSON]:
    if not isinstance(tools, list):
        raise ResponderError(
            "Invalid type for 'tools': expected an array.", param="tools", code="invalid_type"
        )
    functions: list[JSON] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not function:
            raise ResponderError(
                f"Invalid value for 'tools[{index}]': expected a function tool "
                "({'type': 'function', 'function': {...}}).",
                param=f"tools[{index}]",
                code="invalid_value",
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise ResponderError(
                f"Missing required parameter: 'tools[{index}].function.name'.",
                param=f"tools[{index}].function.name",
                code="missing_required_parameter",
            )
        functions.append(function)
    return functions


def tool_calls_for(body: JSON, seed: str) -> list[JSON] | None:
    """The tool calls the answer makes, or None when it answers in text.

    With `tools` the answer calls one: the function `tool_choice` names, or (with `required`
    or `auto`) one picked by the seed; `tool_choice: "none"` and a conversation whose last
    message is a tool's result are answered in text. Arguments are valid against the
    function's `parameters` schema.
    """
    tools = body.get("tools")
    if not tools:
        return None
    functions = _functions(tools)
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return None
    messages = body.get("messages") or []
    last_role = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else None
    if choice == "auto" and last_role in ("tool", "function"):
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise ResponderError(
                f"Invalid value for 'tool_choice': no function named {name!r} in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        function = chosen[0]
    elif choice in ("auto", "required"):
        function = functions[int(_fraction(seed + ":tool") * len(functions))]
    else:
        raise ResponderError(
            f"Invalid value: {choice!r}. Supported values are: 'none', 'auto' and 'required'.",
            param="tool_choice",
            code="invalid_value",
        )
    parameters = function.get("parameters") or _EMPTY_PARAMETERS
    try:
        arguments = instance_for_schema(parameters, seed + ":" + function["name"])
    except ValueError as exc:
        raise ResponderError(
            f"Invalid schema for function '{function['name']}': {exc}",
            param="tools",
            code="invalid_function_parameters",
        ) from None
    call_id = "call_" + hashlib.sha256((seed + ":call").encode()).hexdigest()[:24]
    return [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": function["name"], "arguments": json.dumps(arguments)},
        }
    ]


def requested_logprobs(body: JSON) -> int | None:
    """How many alternatives per token the request asks for (0 upwards), or None for none."""
    wanted = body.get("logprobs")
    top = body.get("top_logprobs")
    bad = isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20
    if top is not None and bad:
        raise ResponderError(
            "Invalid 'top_logprobs': expected an integer from 0 to 20.",
            param="top_logprobs",
            code="invalid_value",
        )
    if top is not None and not wanted:
        raise ResponderError(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
            "'top_logprobs' is given.",
            param="top_logprobs",
            code="invalid_value",
        )
    return (top or 0) if wanted else None


def _entry(raw: bytes, logprob: float) -> JSON:
    token = raw.decode("utf-8", errors="replace")
    return {"token": token, "logprob": logprob, "bytes": list(raw)}


def logprobs_for(content: str, model: str, top: int, seed: str) -> JSON:
    """A choice's `logprobs`: one entry per token of `content`, each with `top` alternatives
    (the chosen token first, the most likely)."""
    encoding = get_encoding(encoding_name_for_model(model)[0])
    entries: list[JSON] = []
    for position, token_id in enumerate(encoding.encode_ordinary(content)):
        raw = encoding.decode_single_token_bytes(token_id)
        logprob = round(math.log(0.5 + 0.5 * _fraction(f"{seed}:{position}")), 6)
        entry = _entry(raw, logprob)
        alternatives = [_entry(raw, logprob)]
        for rank in range(1, top):
            other = encoding.decode_single_token_bytes((token_id + rank * 7919) % 50_000)
            alternatives.append(_entry(other, round(logprob - rank - 1.0, 6)))
        entry["top_logprobs"] = alternatives[:top]
        entries.append(entry)
    return {"content": entries, "refusal": None}


def forced_tool_schema(body: JSON) -> JSON | None:
    """For a model that cannot call tools itself: when `tool_choice` demands a call
    (`required`, or a named function), a JSON schema of `{"name", "arguments"}` covering the
    allowed functions, to constrain the answer with; None when no call is demanded."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools or not (choice == "required" or isinstance(choice, dict)):
        return None
    functions = _functions(tools)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise ResponderError(
                f"Invalid value for 'tool_choice': no function named {name!r} in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or _EMPTY_PARAMETERS,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_answer(answer: JSON) -> None:
    """Turn each choice whose text is a `{"name", "arguments"}` object (an answer constrained
    by `forced_tool_schema`) into a tool call, in place; a cut-off text is left as it is."""
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        try:
            call = json.loads(message.get("content") or "")
        except ValueError:
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        seed = f"{answer.get('id')}:{choice.get('index', 0)}"
        call_id = "call_" + hashlib.sha256(seed.encode()).hexdigest()[:24]
        arguments = json.dumps(call.get("arguments") or {})
        function = {"name": call["name"], "arguments": arguments}
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
        message["content"] = None
        choice["finish_reason"] = "tool_calls"
