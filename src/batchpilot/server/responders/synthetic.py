"""A responder that answers instantly and deterministically, without a model.

Every answer is derived from a sha256 of the request body, so the same request always gets the
same content. Text answers echo the last user message; `json_schema` response formats get an
instance valid against the schema; embeddings are unit-norm pseudo-random vectors. Token usage
is counted with the model's real encoding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
from typing import Any

from batchpilot.jsontypes import json_type_name
from batchpilot.reasoning import is_reasoning_model, thinking_tokens
from batchpilot.server.responders.base import ResponderError
from batchpilot.server.responders.choices import logprobs_for, requested_logprobs, tool_calls_for
from batchpilot.server.responders.prompt_cache import PromptCache
from batchpilot.server.schema_instance import instance_for_schema
from batchpilot.tokens import count_request, count_text, encoding_name_for_model, get_encoding

__all__ = ["SyntheticResponder"]

JSON = dict[str, Any]

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_ECHO_WORDS = 12
_MAX_N = 128
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_JSON_OBJECT_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["answer", "confidence"],
}
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)


class SyntheticResponder:
    """Deterministic answers for chat completions and embeddings, fast enough for benchmarks."""

    name = "synthetic"

    blocking = False  # answers in microseconds: the server may call it on its event loop

    def __init__(self, *, embedding_dim: int = 256) -> None:
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be at least 1, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.prompt_cache = PromptCache()

    def chat(self, body: JSON) -> JSON:
        model = _require_model(body)
        messages = body.get("messages")
        if messages is None:
            raise _missing("messages")
        if not isinstance(messages, list):
            raise _invalid_type("messages", "an array of objects", messages)
        if not messages:
            raise ResponderError(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param="messages",
                code="empty_array",
            )
        for index, message in enumerate(messages):
            _check_message(message, f"messages[{index}]")
        n = _optional_int(body, "n", hi=_MAX_N) or 1
        limit = _optional_int(body, "max_completion_tokens")
        if limit is None:
            limit = _optional_int(body, "max_tokens")
        # a reasoning model thinks first; its reasoning tokens count in the limit and in usage
        reasoning = is_reasoning_model(model)
        if reasoning:
            _check_reasoning_params(body)
        thinking = thinking_tokens(body.get("reasoning_effort")) if reasoning else 0
        if limit is not None:
            thinking = min(thinking, limit)
            limit -= thinking
        response_format = _response_format(body)
        top_logprobs = requested_logprobs(body)

        seed = _body_seed(body)
        choices: list[JSON] = []
        completion_tokens = thinking * n
        for index in range(n):
            choice_seed = seed if index == 0 else f"{seed}:{index}"
            calls = tool_calls_for(body, choice_seed)
            if calls is not None:
                arguments = "".join(call["function"]["arguments"] for call in calls)
                completion_tokens += count_text(arguments, model)
                message = {"role": "assistant", "content": None, "refusal": None}
                message.update(annotations=[], tool_calls=calls)
                choice = {"index": index, "message": message, "finish_reason": "tool_calls"}
                choices.append({**choice, "logprobs": None})
                continue
            content = _content(response_format, messages, choice_seed, index)
            tokens = count_text(content, model)
            finish_reason = "stop"
            if limit is not None and tokens > limit:
                content, tokens = _truncate(content, limit, model)
                finish_reason = "length"
            completion_tokens += tokens
            message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
            logprobs = None
            if top_logprobs is not None:
                logprobs = logprobs_for(content, model, top_logprobs, choice_seed)
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }
            )
        prompt_tokens = count_request(body, "/v1/chat/completions").tokens
        cached = self.prompt_cache.cached_tokens(model, messages, prompt_tokens)
        return {
            "id": "chatcmpl-" + _base62(seed, 24),
            "object": "chat.completion",
            "created": 0,  # the server sets it from its clock
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": thinking * n},
            },
            "system_fingerprint": "fp_batchpilot_synthetic",
            "service_tier": "default",
        }

    def embed(self, body: JSON) -> JSON:
        model = _require_model(body)
        if "input" not in body or body["input"] is None:
            raise _missing("input")
        keys = _embedding_keys(body["input"])
        dimensions = _optional_int(body, "dimensions") or self.embedding_dim
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            raise ResponderError(
                f"Invalid value: {encoding_format!r}. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        data: list[JSON] = []
        for index, key in enumerate(keys):
            packed = _vector(model.encode("utf-8") + b"\0" + key, dimensions)
            embedding: str | list[float] = (
                base64.b64encode(packed).decode("ascii")
                if encoding_format == "base64"
                else list(struct.unpack(f"<{dimensions}f", packed))
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = count_request(body, "/v1/embeddings").tokens
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def close(self) -> None:
        return None


def _missing(param: str) -> ResponderError:
    return ResponderError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _invalid_type(param: str, expected: str, value: Any) -> ResponderError:
    return ResponderError(
        f"Invalid type for '{param}': expected {expected}, "
        f"but got {json_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _require_model(body: JSON) -> str:
    if not isinstance(body, dict):
        raise ResponderError("The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    if not model:
        raise ResponderError("Invalid 'model': empty string.", param="model", code="empty_string")
    return model


def _check_message(message: Any, param: str) -> None:
    if not isinstance(message, dict):
        raise _invalid_type(param, "an object", message)
    role = message.get("role")
    if role is None:
        raise _missing(f"{param}.role")
    if role not in _ROLES:
        supported = ", ".join(f"'{r}'" for r in _ROLES)
        raise ResponderError(
            f"Invalid value: {role!r}. Supported values are: {supported}.",
            param=f"{param}.role",
            code="invalid_value",
        )


def _optional_int(body: JSON, key: str, lo: int = 1, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(key, "an integer", value)
    if value < lo:
        raise ResponderError(
            f"Invalid '{key}': integer below minimum value. Expected a value >= {lo}, "
            f"but got {value} instead.",
            param=key,
            code="integer_below_min_value",
        )
    if hi is not None and value > hi:
        raise ResponderError(
            f"Invalid '{key}': integer above maximum value. Expected a value <= {hi}, "
            f"but got {value} instead.",
            param=key,
            code="integer_above_max_value",
        )
    return value


def _response_format(body: JSON) -> JSON | None:
    """The `response_format` as {"type": ..., "schema": ...}, or None for plain text."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _invalid_type("response_format", "an object", fmt)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": kind, "schema": _JSON_OBJECT_SCHEMA}
    if kind != "json_schema":
        raise ResponderError(
            f"Invalid value: {kind!r}. Supported values are: 'text', 'json_object', and "
            "'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    spec = fmt.get("json_schema")
    if spec is None:
        raise _missing("response_format.json_schema")
    if not isinstance(spec, dict):
        raise _invalid_type("response_format.json_schema", "an object", spec)
    schema = spec.get("schema", _JSON_OBJECT_SCHEMA)
    if not isinstance(schema, dict):
        raise _invalid_type("response_format.json_schema.schema", "an object", schema)
    return {"type": kind, "schema": schema, "name": spec.get("name", "response")}


def _body_seed(body: JSON) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _base62(seed: str, length: int) -> str:
    digest = hashlib.sha256(seed.encode("ascii")).digest()
    return "".join(_ID_ALPHABET[byte % len(_ID_ALPHABET)] for byte in digest[:length])


def _content(response_format: JSON | None, messages: list[Any], seed: str, index: int) -> str:
    if response_format is not None:
        try:
            return json.dumps(instance_for_schema(response_format["schema"], seed))
        except ValueError as exc:
            name = response_format.get("name", "response")
            raise ResponderError(
                f"Invalid schema for response_format '{name}': {exc}",
                param="response_format",
                code="invalid_json_schema",
            ) from None
    text = _last_user_text(messages)
    words = text.split()
    echo = " ".join(words[:_ECHO_WORDS]) + (" ..." if len(words) > _ECHO_WORDS else "")
    answer = f"Synthetic answer: {echo}" if echo else "Synthetic answer."
    return answer if index == 0 else f"{answer} (variant {index + 1})"


def _last_user_text(messages: list[Any]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    content = (users or messages)[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def _check_reasoning_params(body: JSON) -> None:
    """What a reasoning model refuses, refused as the API words it."""
    if body.get("max_tokens") is not None:
        raise ResponderError(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise ResponderError(
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.",
            param="temperature",
            code="unsupported_value",
        )


def _truncate(content: str, limit: int, model: str) -> tuple[str, int]:
    """The longest token prefix of `content` that re-encodes to at most `limit` tokens."""
    encoding = get_encoding(encoding_name_for_model(model)[0])
    tokens = encoding.encode_ordinary(content)
    for keep in range(min(limit, len(tokens)), -1, -1):
        cut = encoding.decode(tokens[:keep])
        used = count_text(cut, model)
        if used <= limit:
            return cut, used
    return "", 0


def _embedding_keys(value: Any) -> list[bytes]:
    """One byte string per input, identifying it; validates the `input` shape."""
    single_tokens = isinstance(value, list) and value and all(_is_token(t) for t in value)
    if isinstance(value, str) or single_tokens:
        value = [value]
    if not isinstance(value, list) or not value or len(value) > 2048:
        raise ResponderError(_INVALID_INPUT)
    keys: list[bytes] = []
    for item in value:
        if isinstance(item, str) and item:
            keys.append(b"s" + item.encode("utf-8"))
        elif isinstance(item, list) and item and all(_is_token(t) for t in item):
            keys.append(b"t" + ",".join(map(str, item)).encode("ascii"))
        else:
            raise ResponderError(_INVALID_INPUT)
    return keys


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _vector(key: bytes, dimensions: int) -> bytes:
    """A unit-norm float32 vector (little-endian bytes) determined by `key`.

    The leading components do not depend on `dimensions`, so a shortened embedding is a
    renormalised prefix of the full one, as with the API's `dimensions` parameter.
    """
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest(), "big"))
    values = [rng.random() * 2.0 - 1.0 for _ in range(dimensions)]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return struct.pack(f"<{dimensions}f", *(v / norm for v in values))
