"""Every `google-genai` SDK exception, translated into ours, as `openai_errors` does for OpenAI's:

404                                           RemoteNotFound
401, 403                                      AuthenticationFailed (a ProviderRejected)
other 4xx that are not retryable              ProviderRejected
408, 409, 429, 5xx, connection, timeout       ProviderUnavailable (after the SDK's retries)

The SDK sends its requests with httpx or httpx2, whichever it finds: both are caught.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import httpx2
from google.genai import errors

from batchpilot.errors import ProviderError, ProviderRejected, ProviderUnavailable
from batchpilot.providers.base import AuthenticationFailed, RemoteNotFound
from batchpilot.providers.openai_errors import redact
from batchpilot.providers.retry import retryable_status

__all__ = ["CONNECT_ERRORS", "HTTP_ERRORS", "TIMEOUTS", "edge", "error_detail", "translate_error"]

HTTP_ERRORS = (httpx.HTTPError, httpx2.HTTPError)
TIMEOUTS = (httpx.TimeoutException, httpx2.TimeoutException)
CONNECT_ERRORS = (httpx.ConnectError, httpx2.ConnectError)
_DETAIL_LIMIT = 500


@contextlib.contextmanager
def edge(what: str, secret: str | None) -> Iterator[None]:
    """Translate SDK (and HTTP) exceptions into ours."""
    try:
        yield
    except errors.APIError as exc:
        raise translate_error(exc, what, secret=secret) from exc
    except TIMEOUTS as exc:
        raise ProviderUnavailable(redact(f"{what}: timed out ({exc})", secret)) from exc
    except HTTP_ERRORS as exc:
        raise ProviderUnavailable(redact(f"{what}: connection lost: {exc}", secret)) from exc


def translate_error(exc: errors.APIError, what: str, *, secret: str | None) -> ProviderError:
    """Our exception for an SDK exception; the message names the operation, never the key."""
    status = int(exc.code or 500)
    message = redact(f"{what}: {status} {error_detail(exc)}", secret)
    if status == 404:
        return RemoteNotFound(message)
    if status in (401, 403):
        return AuthenticationFailed(message)
    if 400 <= status < 500 and not retryable_status(status):
        return ProviderRejected(message)
    return ProviderUnavailable(message)


def error_detail(exc: errors.APIError) -> str:
    """The server's `status: message` of an error answer, cut to a readable length."""
    text = f"{exc.status}: {exc.message}" if exc.status else str(exc.message or exc)
    return text if len(text) <= _DETAIL_LIMIT else text[:_DETAIL_LIMIT] + "…"
