"""Real-time limits (requests and tokens per minute, requests per day) as token buckets
(`batchpilot.tokenbucket`, shared with the real-time lane)."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from batchpilot.server.config import RateLimit
from batchpilot.tokenbucket import TokenBucket

__all__ = ["Decision", "RateLimiter", "format_duration"]


def format_duration(seconds: float) -> str:
    """Format like the API's reset headers: `1s`, `6m0s`, `20ms`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    seconds = math.ceil(seconds * 1000) / 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes or hours:
        text = f"{int(minutes)}m" + text
    if hours:
        text = f"{int(hours)}h" + text
    return text


@dataclass(frozen=True)
class Decision:
    allowed: bool
    headers: dict[str, str]
    retry_after_s: float = 0.0
    kind: str = ""
    message: str = ""


class RateLimiter:
    """Buckets per model, filled in virtual time; waits and headers are in real seconds."""

    def __init__(self, limits: dict[str, RateLimit], time_scale: float = 1.0) -> None:
        self._limits = limits
        self._scale = time_scale
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def _bucket(
        self, model: str, kind: str, capacity: int, period: float, now: float
    ) -> TokenBucket:
        bucket = self._buckets.get((model, kind))
        if bucket is None:
            bucket = self._buckets[(model, kind)] = TokenBucket(capacity, period, now)
        bucket.refill(now)
        return bucket

    def check(self, model: str, tokens: int, now: float) -> Decision:
        """Take one request of `tokens` from the model's buckets, or say how long to wait."""
        limit = self._limits.get(model)
        if limit is None:
            return Decision(True, {})
        with self._lock:
            buckets: list[tuple[str, TokenBucket, float]] = []
            if limit.rpm:
                buckets.append(("requests", self._bucket(model, "rpm", limit.rpm, 60, now), 1))
            if limit.tpm:
                if tokens > limit.tpm:
                    return Decision(
                        False,
                        {},
                        0.0,
                        "tokens",
                        f"Request too large for {model} on tokens per min (TPM): Limit "
                        f"{limit.tpm}, Requested {tokens}. The input or output tokens must be "
                        "reduced in order to run successfully.",
                    )
                buckets.append(
                    ("tokens", self._bucket(model, "tpm", limit.tpm, 60, now), float(tokens))
                )
            if limit.rpd:
                buckets.append(("requests", self._bucket(model, "rpd", limit.rpd, 86_400, now), 1))
            waits = [(bucket.wait_for(amount), kind, bucket) for kind, bucket, amount in buckets]
            allowed = all(wait == 0 for wait, _, _ in waits)
            if allowed:
                for _, bucket, amount in buckets:
                    bucket.take(amount)
            headers = self._headers(model, limit)
            if allowed:
                return Decision(True, headers)
            wait, kind, bucket = max(waits, key=lambda item: item[0])
            per = (
                "tokens per min (TPM)"
                if bucket is self._buckets.get((model, "tpm"))
                else (
                    "requests per day (RPD)"
                    if bucket is self._buckets.get((model, "rpd"))
                    else "requests per min (RPM)"
                )
            )
            used = bucket.capacity - int(bucket.level)
            message = (
                f"Rate limit reached for {model} on {per}: Limit {bucket.capacity}, Used {used}, "
                f"Requested {tokens if kind == 'tokens' else 1}. Please try again in "
                f"{format_duration(wait / self._scale)}."
            )
            return Decision(False, headers, wait / self._scale, kind, message)

    def _headers(self, model: str, limit: RateLimit) -> dict[str, str]:
        headers: dict[str, str] = {}
        rpm = self._buckets.get((model, "rpm"))
        if rpm is not None and limit.rpm:
            headers["x-ratelimit-limit-requests"] = str(limit.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, int(rpm.level)))
            headers["x-ratelimit-reset-requests"] = format_duration(rpm.reset_in() / self._scale)
        tpm = self._buckets.get((model, "tpm"))
        if tpm is not None and limit.tpm:
            headers["x-ratelimit-limit-tokens"] = str(limit.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, int(tpm.level)))
            headers["x-ratelimit-reset-tokens"] = format_duration(tpm.reset_in() / self._scale)
        return headers
