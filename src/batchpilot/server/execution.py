"""Running one request through the responder, with content faults applied."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from batchpilot.server.faults import CONTENT_KINDS, Fault
from batchpilot.server.media_endpoints import create_video, edit_images
from batchpilot.server.more_endpoints import complete, generate_images, moderate
from batchpilot.server.objects import error_body
from batchpilot.server.responders.base import Responder, ResponderError
from batchpilot.server.responses_api import chat_body_of, response_of

GEMINI_ENDPOINT = "/v1beta/models:generateContent"

__all__ = ["GEMINI_ENDPOINT", "body_sha256", "execute", "http_error_body", "usage_of"]

log = logging.getLogger(__name__)

_STATUS_TEXT = {
    429: (
        "requests",
        "rate_limit_exceeded",
        "You've exceeded the rate limit, please slow down and try again. (local server fault)",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. (local server fault)",
    ),
    502: ("server_error", None, "Bad gateway. (local server fault)"),
    503: (
        "server_error",
        None,
        "The engine is currently overloaded, please try again later. (local server fault)",
    ),
}


def body_sha256(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def usage_of(response: dict[str, Any]) -> tuple[int, int, int]:
    """(input, cached, output) tokens billed for an answer (chat, embeddings or responses)."""
    usage = response.get("usage")
    gemini = response.get("usageMetadata")
    if isinstance(gemini, dict):
        prompt = int(gemini.get("promptTokenCount", 0) or 0)
        cached = int(gemini.get("cachedContentTokenCount", 0) or 0)
        output = int(gemini.get("candidatesTokenCount", 0) or 0)
        return prompt, cached, output + int(gemini.get("thoughtsTokenCount", 0) or 0)
    if not isinstance(usage, dict):
        return 0, 0, 0
    prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
    output = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    return prompt, int(details.get("cached_tokens", 0) or 0), output


def http_error_body(fault: Fault) -> dict[str, Any]:
    """The error envelope a fault of the given status answers with."""
    type_, code, message = _STATUS_TEXT.get(
        fault.status,
        (
            "invalid_request_error" if fault.status < 500 else "server_error",
            None,
            f"Injected error {fault.status}. (local server fault)",
        ),
    )
    return error_body(fault.message or message, type_, fault.code or code)


def _apply_content_fault(response: dict[str, Any], fault: Fault) -> None:
    for choice in response.get("choices", []):
        message = choice.get("message", {})
        if fault.kind == "refusal":
            message["content"] = None
            message["refusal"] = fault.refusal_text
            choice["finish_reason"] = "stop"
        elif fault.kind == "schema_violation":
            message["content"] = '{"unexpected": "a valid JSON answer that breaks the schema"}'
        elif fault.kind == "length":
            content = message.get("content") or ""
            message["content"] = content[: max(1, len(content) // 2)]
            choice["finish_reason"] = "length"


def execute(
    responder: Responder,
    endpoint: str,
    body: dict[str, Any],
    content_fault: Fault | None = None,
    now: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """Answer one body: (HTTP status, response body or error envelope). With `now` (the
    server's clock), the answer's timestamps are that time."""
    if endpoint == "/v1/messages":
        from batchpilot.server.anthropic_messages import run_message

        return run_message(responder, body, content_fault)
    if endpoint == GEMINI_ENDPOINT:
        from batchpilot.server.gemini_content import run_generate

        return run_generate(responder, body, content_fault)
    try:
        if endpoint in ("/v1/chat/completions", "/v1/responses"):
            asked = chat_body_of(body) if endpoint == "/v1/responses" else body
            response = responder.chat(asked)
            if content_fault is not None and content_fault.kind in CONTENT_KINDS:
                _apply_content_fault(response, content_fault)
            if now is not None:
                response["created"] = int(now)
            if endpoint == "/v1/responses":
                created = now if now is not None else float(response.get("created") or 0)
                return 200, response_of(response, body, created)
            return 200, response
        if endpoint == "/v1/embeddings":
            return 200, responder.embed(body)
        if endpoint == "/v1/completions":
            response = complete(responder, body)
            if now is not None:
                response["created"] = int(now)
            return 200, response
        if endpoint == "/v1/moderations":
            return 200, moderate(responder, body)
        if endpoint in ("/v1/images/generations", "/v1/images/edits"):
            images = generate_images if endpoint == "/v1/images/generations" else edit_images
            response = images(body)
            response["created"] = int(now) if now is not None else 0
            return 200, response
        if endpoint == "/v1/videos":
            return 200, create_video(body, now if now is not None else 0.0)
    except ResponderError as exc:
        return exc.status_code, exc.envelope()
    except Exception:
        log.exception("responder %s failed", responder.name)
        return 500, error_body(
            "The local responder failed while processing the request; see the server log.",
            "server_error",
        )
    return 404, error_body(f"Unknown endpoint {endpoint}.", "invalid_request_error")
