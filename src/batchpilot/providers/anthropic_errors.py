"""Every `anthropic` SDK exception, translated into ours, as `openai_errors` does for OpenAI's:

404                                         RemoteNotFound
401, 403                                    AuthenticationFailed (a ProviderRejected)
other 4xx that are not retryable            ProviderRejected
408, 409, 429, 5xx, 529, connection, timeout ProviderUnavailable (after the SDK's retries)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anthropic
import httpx2

from batchpilot.errors import ProviderError, ProviderRejected, ProviderUnavailable
from batchpilot.providers.base import AuthenticationFailed, RemoteNotFound
from batchpilot.providers.openai_errors import redact
from batchpilot.providers.retry import retryable_status

__all__ = ["edge", "error_detail", "translate_error"]

_DETAIL_LIMIT = 500


@contextlib.contextmanager
def edge(what: str, secret: str | None) -> Iterator[None]:
    """Translate SDK (and, while streaming, HTTP) exceptions into ours."""
    try:
        yield
    except anthropic.AnthropicError as exc:
        raise translate_error(exc, what, secret=secret) from exc
    except httpx2.HTTPError as exc:
        raise ProviderUnavailable(redact(f"{what}: connection lost: {exc}", secret)) from exc


def translate_error(
    exc: anthropic.AnthropicError, what: str, *, secret: str | None
) -> ProviderError:
    """Our exception for an SDK exception; the message names the operation, never the key."""
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        message = f"{what}: {status} {error_detail(exc)}"
        if exc.request_id:
            message += f" (request id {exc.request_id})"
        message = redact(message, secret)
        if status == 404:
            return RemoteNotFound(message)
        if status in (401, 403):
            return AuthenticationFailed(message)
        if 400 <= status < 500 and not retryable_status(status):
            return ProviderRejected(message)
        return ProviderUnavailable(message)
    if isinstance(exc, anthropic.APITimeoutError):
        message = f"{what}: {exc.request.method} {exc.request.url} timed out"
    elif isinstance(exc, anthropic.APIConnectionError):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        message = f"{what}: cannot reach {exc.request.method} {exc.request.url}{cause}"
    else:
        message = f"{what}: {type(exc).__name__}: {exc}"
    return ProviderUnavailable(redact(message, secret))


def error_detail(exc: anthropic.APIStatusError) -> str:
    """The server's `type: message` of an error answer, cut to a readable length."""
    if exc.api_message:
        text = f"{exc.type}: {exc.api_message}" if exc.type else exc.api_message
    else:
        text = exc.message
    return text if len(text) <= _DETAIL_LIMIT else text[:_DETAIL_LIMIT] + "…"
