"""Every OpenAI SDK exception, translated into ours:

    404                                         RemoteNotFound
    401, 403                                    AuthenticationFailed (a ProviderRejected)
    other 4xx that are not retryable            ProviderRejected
    408, 409, 429, 5xx, connection, timeout     ProviderUnavailable (after the SDK's own retries)

A 409 on cancel means "this batch cannot be cancelled any more" and is a ProviderRejected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx2
import openai

from batchpilot.errors import ProviderError, ProviderRejected, ProviderUnavailable
from batchpilot.providers.base import AuthenticationFailed, RemoteNotFound
from batchpilot.providers.retry import retryable_status

__all__ = ["edge", "error_detail", "redact", "translate_error"]

_DETAIL_LIMIT = 500


@contextlib.contextmanager
def edge(what: str, secret: str | None, *, conflict_rejects: bool = False) -> Iterator[None]:
    """Translate SDK (and, while streaming, HTTP) exceptions into ours."""
    try:
        yield
    except openai.OpenAIError as exc:
        raise translate_error(exc, what, secret=secret, conflict_rejects=conflict_rejects) from exc
    except httpx2.HTTPError as exc:
        raise ProviderUnavailable(redact(f"{what}: connection lost: {exc}", secret)) from exc


def translate_error(
    exc: openai.OpenAIError, what: str, *, secret: str | None, conflict_rejects: bool = False
) -> ProviderError:
    """Our exception for an SDK exception; the message names the operation, never the key."""
    error: ProviderError
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{what}: {status} {error_detail(exc)}"
        if exc.request_id:
            message += f" (request id {exc.request_id})"
        if status == 404:
            error = RemoteNotFound(redact(message, secret))
        elif status in (401, 403):
            error = AuthenticationFailed(redact(message, secret))
        elif 400 <= status < 500 and (
            not retryable_status(status) or (status == 409 and conflict_rejects)
        ):
            error = ProviderRejected(redact(message, secret))
        else:
            error = ProviderUnavailable(redact(message, secret))
        return error
    if isinstance(exc, openai.APITimeoutError):
        message = f"{what}: {exc.request.method} {exc.request.url} timed out"
    elif isinstance(exc, openai.APIConnectionError):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        message = f"{what}: cannot reach {exc.request.method} {exc.request.url}{cause}"
    elif isinstance(exc, openai.APIResponseValidationError):
        message = f"{what}: unexpected response ({exc.status_code}): {exc.message}"
    else:
        message = f"{what}: {type(exc).__name__}: {exc}"
    return ProviderUnavailable(redact(message, secret))


def error_detail(exc: openai.APIStatusError) -> str:
    """The server's `code: message` of an error answer, cut to a readable length."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        code = body.get("code") or body.get("type")
        text = f"{code}: {body['message']}" if code else str(body["message"])
    else:
        text = exc.message
    return text if len(text) <= _DETAIL_LIMIT else text[:_DETAIL_LIMIT] + "…"


def redact(message: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        return message.replace(secret, "***")
    return message
