"""Gemini through the official `google-genai` SDK: Batch Mode as the batch API (`gemini_batch`)
and generateContent as the real-time API; bodies and answers are translated in
`gemini_shapes`, every SDK exception in `gemini_errors`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx
from google import genai
from google.genai import errors, types

from batchpilot.errors import UserInputError
from batchpilot.providers.base import STANDARD, Answer, CallFailed
from batchpilot.providers.gemini_batch import INLINE_LIMIT, GeminiBatches
from batchpilot.providers.gemini_errors import CONNECT_ERRORS, HTTP_ERRORS, TIMEOUTS, error_detail
from batchpilot.providers.gemini_shapes import CAPABILITIES, chat_completion, request_parts
from batchpilot.providers.openai_errors import redact
from batchpilot.providers.retry import retryable_status

__all__ = ["API_VERSION", "GeminiProvider", "GeminiRealtime", "gemini_provider"]

API_VERSION = "v1beta"
"""Batch Mode is served under v1beta."""
CUSTOM_ID_HEADER = "x-batchpilot-custom-id"
_RETRIED = [408, 429, 500, 502, 503, 504]


class GeminiProvider:
    """A Provider over an injected `genai.Client`, reached at `base_url` with `api_key`."""

    name = "gemini"
    capabilities = CAPABILITIES

    def __init__(
        self,
        client: genai.Client,
        *,
        api_key: str,
        base_url: str | None,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        self._client = client
        self._api_key = api_key
        self._base_url = base_url
        self._batches = GeminiBatches(client, secret=api_key, inline_limit=inline_limit)

    @property
    def client(self) -> genai.Client:
        return self._client

    @property
    def base_url(self) -> str | None:
        return self._base_url

    @property
    def batches(self) -> GeminiBatches:
        return self._batches

    def realtime(self) -> GeminiRealtime:
        # Our own httpx client: the SDK would otherwise pick aiohttp when it is installed,
        # whose errors and warnings differ.
        http = httpx.AsyncClient(timeout=None)
        options = types.HttpOptions(
            base_url=self._base_url,
            api_version=API_VERSION,
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=http,
        )
        client = genai.Client(api_key=self._api_key, http_options=options)
        return GeminiRealtime(client, http, secret=self._api_key)

    def close(self) -> None:
        self._client.close()


class GeminiRealtime:
    """The RealtimeAPI over a `genai.Client` it owns (its async side): a body planned for chat
    completions goes out as a generateContent request and comes back as a chat completion."""

    def __init__(
        self, client: genai.Client, http: httpx.AsyncClient, *, secret: str | None
    ) -> None:
        self._client = client
        self._http = http
        self._secret = secret

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
            contents, config = request_parts(body, endpoint)
        except UserInputError as exc:
            return CallFailed(str(exc), retryable=False)
        options: dict[str, Any] = {}
        if custom_id is not None:
            options["headers"] = {CUSTOM_ID_HEADER: custom_id}
        if timeout_s is not None:
            options["timeout"] = max(1, int(timeout_s * 1000))
        if options:
            config["http_options"] = options
        model = str(body.get("model") or "")
        try:
            response = await self._client.aio.models.generate_content(
                model=model,
                contents=contents,
                config=config,  # type: ignore[arg-type]
            )
        except errors.APIError as exc:
            status = int(exc.code or 500)
            headers = getattr(exc.response, "headers", None)
            return CallFailed(
                self._redact(f"http {status}: {error_detail(exc)}"),
                retryable=retryable_status(status),
                status=status,
                headers=dict(headers) if headers is not None else None,
            )
        except TIMEOUTS:
            return CallFailed("timeout: no answer in time", retryable=True, may_have_run=True)
        except HTTP_ERRORS as exc:
            return CallFailed(
                self._redact(f"connection error ({exc})"),
                retryable=True,
                may_have_run=not isinstance(exc, CONNECT_ERRORS),
            )
        except ValueError as exc:  # an answer the SDK could not read
            return CallFailed(
                self._redact(f"unreadable answer: {exc}"), retryable=True, may_have_run=True
            )
        answer = chat_completion(response.model_dump(mode="json", exclude_none=True), model)
        raw = response.sdk_http_response
        headers = dict(raw.headers) if raw is not None and raw.headers is not None else {}
        return Answer(answer, headers)

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()
        self._client.close()

    def _redact(self, message: str) -> str:
        return redact(message, self._secret)


def gemini_provider(
    *,
    base_url: str | None,
    api_key_env: str | None = None,
    max_retries: int = 2,
    timeout: float = 600.0,
    environ: Mapping[str, str] | None = None,
    inline_limit: int = INLINE_LIMIT,
) -> GeminiProvider:
    """Build a provider from settings and the environment (`os.environ` unless given): the key
    from `api_key_env` (default GEMINI_API_KEY, then GOOGLE_API_KEY), the base URL from the
    settings or GOOGLE_GEMINI_BASE_URL (a trailing API version is dropped)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    names = [api_key_env] if api_key_env else ["GEMINI_API_KEY", "GOOGLE_API_KEY"]
    api_key = next((env[n] for n in names if env.get(n)), None)
    if api_key is None:
        raise UserInputError(
            f"no API key for the gemini provider: set the environment variable {names[0]}"
            + (f" (or {names[1]})" if len(names) > 1 else "")
            + " (or name another variable with provider.api_key_env)"
        )
    base_url = base_url or env.get("GOOGLE_GEMINI_BASE_URL") or None
    if base_url is not None:
        base_url = base_url.rstrip("/")
        for version in ("/v1", "/v1beta", "/v1alpha"):
            base_url = base_url.removesuffix(version)
    options = types.HttpOptions(
        base_url=base_url,
        api_version=API_VERSION,
        timeout=int(timeout * 1000),
        retry_options=types.HttpRetryOptions(attempts=max_retries + 1, http_status_codes=_RETRIED),
    )
    client = genai.Client(api_key=api_key, http_options=options)
    return GeminiProvider(client, api_key=api_key, base_url=base_url, inline_limit=inline_limit)
