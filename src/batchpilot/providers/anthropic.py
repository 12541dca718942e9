"""Anthropic through the official `anthropic` SDK: Message Batches as the batch API
(`anthropic_batch`) and the Messages API as the real-time API; bodies and answers are
translated in `anthropic_shapes`, every SDK exception in `anthropic_errors`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anthropic
import httpx2
from anthropic._types import RequestOptions

from batchpilot.errors import UserInputError
from batchpilot.providers.anthropic_batch import AnthropicBatches, BatchRecord
from batchpilot.providers.anthropic_errors import error_detail
from batchpilot.providers.anthropic_shapes import (
    CHAT,
    MESSAGES,
    chat_completion,
    messages_params,
    rate_limit_headers,
)
from batchpilot.providers.base import STANDARD, Answer, CallFailed
from batchpilot.providers.capabilities import ANTHROPIC
from batchpilot.providers.openai_errors import redact
from batchpilot.providers.retry import json_object, retryable_status, unanswered

__all__ = [
    "CAPABILITIES",
    "RECORD_FILE",
    "AnthropicProvider",
    "AnthropicRealtime",
    "anthropic_provider",
]

CAPABILITIES = ANTHROPIC
RECORD_FILE = "anthropic-batches.jsonl"
CUSTOM_ID_HEADER = "x-batchpilot-custom-id"


class AnthropicProvider:
    """A Provider over an injected `anthropic.Anthropic` client. Our tags on its batches are
    kept in `record_path` (None: in memory only, so a new process cannot adopt them)."""

    name = "anthropic"
    capabilities = CAPABILITIES

    def __init__(self, client: anthropic.Anthropic, *, record_path: Path | None = None) -> None:
        self._client = client
        self._batches = AnthropicBatches(client, BatchRecord(record_path))

    @property
    def client(self) -> anthropic.Anthropic:
        return self._client

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    @property
    def batches(self) -> AnthropicBatches:
        return self._batches

    def realtime(self) -> AnthropicRealtime:
        client = self._client
        return AnthropicRealtime(
            anthropic.AsyncAnthropic(
                api_key=client.api_key, base_url=client.base_url, max_retries=0
            )
        )

    def close(self) -> None:
        self._client.close()


class AnthropicRealtime:
    """The RealtimeAPI over an `anthropic.AsyncAnthropic` client it owns: a body planned for
    chat completions goes out as a Messages request and comes back as a chat completion."""

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self._client = client
        self._secret = client.api_key

    async def call(
        self,
        body: dict[str, Any],
        endpoint: str,
        *,
        custom_id: str | None = None,
        timeout_s: float | None = None,
        tier: str = STANDARD,
    ) -> Answer | CallFailed:
        try:
            params = messages_params(body, endpoint)
        except UserInputError as exc:
            return CallFailed(str(exc), retryable=False)
        options: RequestOptions = {"max_retries": 0}
        if custom_id is not None:
            options["headers"] = {CUSTOM_ID_HEADER: custom_id}
        if timeout_s is not None:
            options["timeout"] = timeout_s
        try:
            raw = await self._client.post(
                MESSAGES,
                cast_to=httpx2.Response,
                body=params,
                options=options,
            )
        except anthropic.APIStatusError as exc:
            status = exc.status_code
            return CallFailed(
                self._redact(f"http {status}: {error_detail(exc)}"),
                retryable=retryable_status(status),
                status=status,
                headers=rate_limit_headers(exc.response.headers),
            )
        except anthropic.APITimeoutError:
            return CallFailed("timeout: no answer in time", retryable=True, may_have_run=True)
        except anthropic.APIConnectionError as exc:
            return unanswered(exc.__cause__, self._redact)
        except anthropic.AnthropicError as exc:
            return CallFailed(self._redact(f"{type(exc).__name__}: {exc}"), retryable=True)
        answer = json_object(raw)
        if isinstance(answer, CallFailed):
            return answer
        body = chat_completion(answer) if endpoint == CHAT else answer
        return Answer(body, rate_limit_headers(raw.headers))

    async def aclose(self) -> None:
        await self._client.close()

    def _redact(self, message: str) -> str:
        return redact(message, self._secret)


def anthropic_provider(
    *,
    base_url: str | None,
    api_key_env: str | None = None,
    state_dir: Path | None = None,
    max_retries: int = 2,
    timeout: float = 600.0,
    environ: Mapping[str, str] | None = None,
    http_client: httpx2.Client | None = None,
) -> AnthropicProvider:
    """Build a provider from settings and the environment (`os.environ` unless given): the key
    from `api_key_env` (default ANTHROPIC_API_KEY), the base URL from the settings or
    ANTHROPIC_BASE_URL; our batches are recorded under `state_dir`."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    variable = api_key_env or "ANTHROPIC_API_KEY"
    api_key = env.get(variable) or None
    if api_key is None:
        raise UserInputError(
            f"no API key for the anthropic provider: set the environment variable {variable} "
            "(or name another variable with provider.api_key_env)"
        )
    base_url = base_url or env.get("ANTHROPIC_BASE_URL") or None
    if base_url is not None:
        base_url = base_url.rstrip("/").removesuffix("/v1")
    client = anthropic.Anthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=max_retries,
        timeout=timeout,
        http_client=http_client,
    )
    record = state_dir / RECORD_FILE if state_dir is not None else None
    return AnthropicProvider(client, record_path=record)
