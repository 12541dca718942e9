"""A responder that answers with a real local model through llama.cpp (xllamacpp)."""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from batchpilot.errors import MissingDependency, StateError
from batchpilot.localmodel import SLOT_CONTEXT, check_runtime, default_model_path, default_slots
from batchpilot.server.responders.base import ResponderError
from batchpilot.server.responders.choices import forced_tool_schema, tool_call_answer

__all__ = ["LlamaResponder"]

JSON = dict[str, Any]

# Streaming is the server's business; the responder always returns one complete object.
_STREAM_KEYS = ("stream", "stream_options")
_TOOL_KEYS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
_MESSAGE_KEYS = ("role", "content", "refusal", "annotations", "tool_calls")


class LlamaResponder:
    """Answers chat completions (and optionally embeddings) with a GGUF model via llama.cpp.

    The request body goes to llama.cpp almost unchanged: `seed`, `temperature`,
    `max_tokens` and `max_completion_tokens` (both honoured), `stop`, `logprobs` and
    `response_format` work as in the OpenAI API. A `json_schema` response format is enforced
    by grammar-constrained decoding; an invalid schema is a 400 error on `response_format`.
    OpenAI-only parameters such as `store`, `metadata`, `service_tier`, `reasoning_effort`,
    `prediction`, `user` or `parallel_tool_calls` are accepted and ignored by llama.cpp;
    `n` other than 1 is rejected with a 400. `stream` is dropped.

    Responses are reshaped to the OpenAI form: `model` echoes the request's model name,
    messages carry `refusal: None` and `annotations: []`, choices carry `logprobs` and
    llama.cpp's `timings` are dropped. Errors from llama.cpp keep their status; a prompt
    beyond the context is a 400 `context_length_exceeded`.

    Slots: llama.cpp decodes up to `n_parallel` requests together (continuous batching), each
    in its own slot of `n_ctx` tokens; more concurrent calls wait in llama.cpp's queue. Calls
    are thread-safe and take no lock, so the server's threads feed every slot. `n_parallel`
    defaults to `default_slots()` (chosen from the machine). `busy_slots()` says how many
    slots are decoding now. `n_threads` is the CPU threads each step computes with (default:
    llama.cpp's choice); on a machine whose cores other work holds, fewer threads spin less.

    Embeddings: with `embedding=True` the same model also serves `/v1/embeddings`, using mean
    pooling over its hidden states (576 dimensions, L2-normalised; chat keeps working). SmolLM2
    is not trained for embeddings, so the vectors are only roughly semantic; each input may hold
    at most 512 tokens (llama.cpp's physical batch). `dimensions` other than the model's own is
    rejected. With `embedding=False` (the default) embeddings are a 400 `model_not_supported`.

    llama.cpp also opens a loopback HTTP listener for the model; it is locked with a random
    API key so that only this object can use the model.
    """

    name = "llama"

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        n_ctx: int = SLOT_CONTEXT,
        n_threads: int | None = None,
        n_parallel: int | None = None,
        embedding: bool = False,
    ) -> None:
        check_runtime()
        import xllamacpp

        self.model_path = default_model_path() if model_path is None else model_path
        if not self.model_path.is_file():
            raise MissingDependency(f"Model file {self.model_path} does not exist.")
        self.embedding = embedding
        if n_parallel is None:
            n_parallel = default_slots(self.model_path)
        if n_parallel < 1:
            raise ValueError(f"n_parallel must be at least 1, not {n_parallel}")
        self.slots = n_parallel
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        # llama.cpp splits its context between the slots: each slot keeps n_ctx tokens.
        params.n_ctx = n_ctx * n_parallel
        params.n_parallel = n_parallel
        params.verbosity = -1
        params.api_keys = [secrets.token_urlsafe(32)]
        if n_threads is not None:
            if n_threads < 1:
                raise ValueError(f"n_threads must be at least 1, not {n_threads}")
            params.cpuparams.n_threads = n_threads
            params.cpuparams_batch.n_threads = n_threads
        # as llama.cpp was given it: -1 leaves the choice to llama.cpp (its physical cores)
        self.threads: int = params.cpuparams.n_threads
        if embedding:
            params.embedding = True
            params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        params.endpoint_metrics = True
        try:
            self._server: Any = xllamacpp.Server(params)
            # Server() returns before its task loop starts; destroying it in that window
            # deadlocks (the stop signal is lost). A metrics request goes through the task
            # loop, so once it has been answered the server can be released safely.
            self._server.handle_metrics()
        except RuntimeError as exc:
            raise StateError(
                f"llama.cpp could not load {self.model_path} (n_ctx={n_ctx}, "
                f"n_parallel={n_parallel}): {exc}"
            ) from exc

    def chat(self, body: JSON) -> JSON:
        request = {key: value for key, value in body.items() if key not in _STREAM_KEYS}
        _check_chat_request(request)
        forced = forced_tool_schema(request)
        if forced is not None:
            # a small model does not call tools by itself: its answer is constrained to a call
            request = {k: v for k, v in request.items() if k not in _TOOL_KEYS}
            spec = {"name": "tool_call", "strict": True, "schema": forced}
            request["response_format"] = {"type": "json_schema", "json_schema": spec}
        raw = self._call("handle_chat_completions", request)
        answer = _normalise_chat(raw, self._model_name(body))
        if forced is not None:
            tool_call_answer(answer)
        return answer

    def embed(self, body: JSON) -> JSON:
        if not self.embedding:
            raise ResponderError(
                "The llama responder was started without embeddings; "
                "start it with embedding=True to serve /v1/embeddings.",
                code="model_not_supported",
                param="model",
            )
        dimensions = body.get("dimensions")
        request = {key: value for key, value in body.items() if key != "dimensions"}
        raw = self._call("handle_embeddings", request)
        return _normalise_embeddings(raw, self._model_name(body), dimensions)

    def close(self) -> None:
        # In-flight calls hold their own reference; the model is freed when the last one ends.
        self._server = None

    def busy_slots(self) -> int:
        """How many slots llama.cpp is decoding in right now (0 when closed)."""
        server = self._server
        if server is None:
            return 0
        for line in str(server.handle_metrics()).splitlines():
            if line.startswith("llamacpp:requests_processing "):
                return int(float(line.split()[1]))
        return 0

    def _model_name(self, body: JSON) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model else self.model_path.stem

    def _call(self, method: str, request: JSON) -> JSON:
        server = self._server
        if server is None:
            raise ResponderError(
                "The llama responder is closed.", status_code=503, type="server_error"
            )
        try:
            raw = getattr(server, method)(request)
        except ValueError as exc:
            raise _value_error(exc, request) from None
        except Exception as exc:
            raise ResponderError(
                f"llama.cpp failed: {exc}", status_code=500, type="server_error"
            ) from None
        if not isinstance(raw, dict):
            raise ResponderError(
                f"llama.cpp returned {type(raw).__name__}, not an object.",
                status_code=500,
                type="server_error",
            )
        if "error" in raw:
            raise _llama_error(raw["error"])
        return raw


def _check_chat_request(request: JSON) -> None:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ResponderError("'messages' must be a non-empty array.", param="messages")
    if request.get("n", 1) not in (1, None):
        # llama.cpp would answer n choices from n slots; one answer per request whatever the slots
        raise ResponderError("The llama responder answers with one choice: n must be 1.", param="n")
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ResponderError(
                "response_format.json_schema.schema must be a JSON Schema object.",
                param="response_format",
            )


def _value_error(exc: ValueError, request: JSON) -> ResponderError:
    message = str(exc)
    lowered = message.lower()
    if "response_format" in request and any(
        marker in lowered for marker in ("json schema", "response_format", "grammar", "parser")
    ):
        return ResponderError(f"Invalid response_format: {message}", param="response_format")
    return ResponderError(message)


def _llama_error(error: Any) -> ResponderError:
    if not isinstance(error, dict):
        return ResponderError(str(error), status_code=500, type="server_error")
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    message = str(error.get("message") or "llama.cpp reported an error")
    kind = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
    if kind == "exceed_context_size_error" or "too large to process" in message:
        return ResponderError(
            f"{message} (the llama responder's context or batch limit)",
            status_code=400,
            code="context_length_exceeded",
        )
    return ResponderError(message, status_code=status, type=kind)


def _usage(raw: Any) -> JSON:
    usage = raw if isinstance(raw, dict) else {}
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens", 0)) if isinstance(details, dict) else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens", prompt + completion)),
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _normalise_chat(raw: JSON, model: str) -> JSON:
    choices: list[JSON] = []
    for position, choice in enumerate(raw.get("choices") or []):
        message = choice.get("message") or {}
        shaped = {key: message[key] for key in _MESSAGE_KEYS if key in message}
        shaped.setdefault("role", "assistant")
        shaped.setdefault("content", None)
        shaped.setdefault("refusal", None)
        shaped.setdefault("annotations", [])
        choices.append(
            {
                "index": choice.get("index", position),
                "message": shaped,
                "logprobs": choice.get("logprobs"),
                "finish_reason": choice.get("finish_reason"),
            }
        )
    response: JSON = {
        "id": raw.get("id") or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(raw.get("created") or time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(raw.get("usage")),
    }
    if raw.get("system_fingerprint"):
        response["system_fingerprint"] = raw["system_fingerprint"]
    return response


def _normalise_embeddings(raw: JSON, model: str, dimensions: Any) -> JSON:
    data: list[JSON] = []
    for position, item in enumerate(raw.get("data") or []):
        vector = item.get("embedding")
        size = _dimension(vector)
        if dimensions is not None and size != dimensions:
            raise ResponderError(
                f"The llama responder's model makes {size}-dimensional embeddings; "
                f"dimensions={dimensions} is not supported.",
                param="dimensions",
            )
        data.append(
            {"object": "embedding", "index": item.get("index", position), "embedding": vector}
        )
    usage = _usage(raw.get("usage"))
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["total_tokens"]},
    }


def _dimension(vector: Any) -> int:
    if isinstance(vector, str):
        return len(base64.b64decode(vector)) // 4
    return len(vector) if isinstance(vector, list) else 0
