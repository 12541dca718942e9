"""Which HTTP statuses are worth another try: one rule for the batch lane's result lines, the
real-time lane's answers and the provider edge's exceptions."""

from __future__ import annotations

__all__ = ["RETRYABLE_4XX", "retryable_status"]

RETRYABLE_4XX = frozenset({408, 409, 429})
"""Timeout, conflict and rate limit: the request is fine, the moment was not."""


def retryable_status(status: int) -> bool:
    """Whether an answer with this HTTP status may succeed if the request is sent again: the
    4xx above and every 5xx; every other 4xx says the request itself is wrong."""
    return status in RETRYABLE_4XX or status >= 500
