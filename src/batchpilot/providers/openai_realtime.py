"""The real-time API over the SDK's async client (OpenAI, Azure OpenAI, compatible servers).

Bodies go out as planned through the client's documented `post` (so the Azure client's
deployment URLs and every endpoint of the Batch API work alike), with the client's own retries
off. Every SDK exception becomes a CallFailed here, with the key redacted. A call at the flex
tier carries `service_tier: "flex"`; the answer's own `service_tier` says which tier ran it.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
from openai._types import RequestOptions

from batchpilot.providers.base import FLEX, STANDARD, Answer, CallFailed
from batchpilot.providers.openai_errors import error_detail, redact
from batchpilot.providers.retry import json_object, retryable_status, unanswered

__all__ = ["CUSTOM_ID_HEADER", "OpenAIRealtime"]

CUSTOM_ID_HEADER = "x-batchpilot-custom-id"


class OpenAIRealtime:
    """The RealtimeAPI over an `openai.AsyncOpenAI` (or `AsyncAzureOpenAI`) client it owns."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client
        self._secret = client.api_key if isinstance(client.api_key, str) else None

    async def call(
        self,
        body: dict[str, Any],
        endpoint: str,
        *,
        custom_id: str | None = None,
        timeout_s: float | None = None,
        tier: str = STANDARD,
    ) -> Answer | CallFailed:
        if tier == FLEX:
            body = {**body, "service_tier": FLEX}
        options: RequestOptions = {"max_retries": 0}
        if custom_id is not None:
            options["headers"] = {CUSTOM_ID_HEADER: custom_id}
        if timeout_s is not None:
            options["timeout"] = timeout_s
        path = endpoint.removeprefix("/v1")
        try:
            raw = await self._client.post(path, cast_to=httpx2.Response, body=body, options=options)
        except openai.APIStatusError as exc:
            status = exc.status_code
            return CallFailed(
                self._redact(f"http {status}: {error_detail(exc)}"),
                retryable=retryable_status(status),
                status=status,
                headers=exc.response.headers,
                code=_error_code(exc.body),
            )
        except openai.APITimeoutError:
            return CallFailed("timeout: no answer in time", retryable=True, may_have_run=True)
        except openai.APIConnectionError as exc:
            return unanswered(exc.__cause__, self._redact)
        except openai.OpenAIError as exc:
            return CallFailed(self._redact(f"{type(exc).__name__}: {exc}"), retryable=True)
        answer = json_object(raw)
        if isinstance(answer, CallFailed):
            return answer
        return Answer(answer, raw.headers)

    async def aclose(self) -> None:
        await self._client.close()

    def _redact(self, message: str) -> str:
        return redact(message, self._secret)


def _error_code(body: object) -> str | None:
    """The `code` of an error answer's body (the SDK hands over its `error` object)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        code = inner.get("code") if isinstance(inner, dict) else None
        return code if isinstance(code, str) else None
    return None
