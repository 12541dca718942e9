"""Which failures are worth another try: one rule for the batch lane's result lines, the
real-time lane's answers and the provider edge's exceptions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import orjson

from batchpilot.jsontext import MAX_NESTING, nesting_within
from batchpilot.providers.base import CallFailed

__all__ = ["RETRYABLE_4XX", "json_object", "retryable_status", "unanswered"]

RETRYABLE_4XX = frozenset({408, 409, 429})
"""Timeout, conflict and rate limit: the request is fine, the moment was not."""


def retryable_status(status: int) -> bool:
    """Whether an answer with this HTTP status may succeed if the request is sent again: the
    4xx above and every 5xx; every other 4xx says the request itself is wrong."""
    return status in RETRYABLE_4XX or status >= 500


def unanswered(cause: BaseException | None, redact: Callable[[str], str]) -> CallFailed:
    """A call whose connection failed: worth another try; it may have run unless the
    connection was never made."""
    detail = f" ({cause})" if cause is not None else ""
    return CallFailed(
        redact(f"connection error{detail}"),
        retryable=True,
        may_have_run=not isinstance(cause, httpx2.ConnectError),
    )


def json_object(raw: httpx2.Response) -> dict[str, Any] | CallFailed:
    """The answer's body as a JSON object, or a failure worth another try when it is not one
    (the call ran, so it may have cost)."""
    try:
        answer = orjson.loads(raw.content)
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and nesting_within(raw.content, answer):
        return answer
    deep = isinstance(answer, dict)
    what = f"nests more than {MAX_NESTING} levels deep" if deep else "is not a JSON object"
    return CallFailed(
        f"http {raw.status_code}: the answer {what}",
        retryable=True,
        headers=raw.headers,
        may_have_run=True,
    )
