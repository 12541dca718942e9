"""Client-side rate limits: token buckets for requests and tokens per minute and requests per day.

The buckets run in wall time (a monotonic clock) and start full. They are seeded from the job or
the built-in tier table, then corrected from the `x-ratelimit-*` headers of every answer: a
lower limit than configured wins, and the remaining count caps the level. The clock and the
sleep are parameters, so that a fake clock makes every wait exact in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from batchpilot.pricing import tier_limits
from batchpilot.tokenbucket import TokenBucket

__all__ = ["RateLimits", "Throttle", "TooLarge", "parse_duration", "retry_after"]

MINUTE_S = 60.0
DAY_S = 86_400.0
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in a reset header: `1s`, `6m0s`, `20ms`, `1.5s`, `1h2m3s` (a bare number is s)."""
    value = text.strip().lower()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"not a duration: {text!r}")
        return number
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total, position = 0.0, 0
    for match in _DURATION.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * units[match.group(2)]
        position = match.end()
    if position != len(value) or not value:
        raise ValueError(f"not a duration: {text!r}")
    return total


@dataclass(frozen=True)
class RateLimits:
    """Real-time limits of one model; None means no limit is known (and none is applied)."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None

    @classmethod
    def from_tier(cls, model: str, tier: str | int = 1) -> RateLimits:
        """The limits of the built-in tier table (all None for an unknown model or tier)."""
        known = tier_limits(model, tier)
        return cls(rpm=known.rpm, tpm=known.tpm, rpd=known.rpd)


class TooLarge(ValueError):
    """A request needs more tokens than the tokens-per-minute bucket can ever hold."""

    def __init__(self, tokens: int, capacity: int) -> None:
        super().__init__(
            f"request too large for the TPM limit: it needs {tokens} tokens "
            f"(input plus max output) and the limit is {capacity} per minute"
        )
        self.tokens = tokens
        self.capacity = capacity


class Throttle:
    """Waits until a request fits every bucket, then takes its share; first come, first served.

    `acquire(tokens)` takes one request from the RPM and RPD buckets and `tokens` from the TPM
    bucket; `refund(tokens)` gives them back when the request is not sent after all.
    `observe(headers)` corrects the buckets from an answer's headers; `pause(seconds)` holds
    every acquisition back (a 429 with `retry-after`).
    """

    def __init__(
        self,
        limits: RateLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self.requests_per_minute = _bucket(limits.rpm, MINUTE_S, now)
        self.tokens_per_minute = _bucket(limits.tpm, MINUTE_S, now)
        self.requests_per_day = _bucket(limits.rpd, DAY_S, now)
        self._paused_until = -math.inf
        self._lock = asyncio.Lock()

    @property
    def limits(self) -> RateLimits:
        """The limits in force (configured, or lowered by the headers)."""
        return RateLimits(
            *(
                None if b is None else b.capacity
                for b in (self.requests_per_minute, self.tokens_per_minute, self.requests_per_day)
            )
        )

    def _needs(self, tokens: int) -> list[tuple[TokenBucket, float]]:
        pairs = [
            (self.requests_per_minute, 1.0),
            (self.tokens_per_minute, float(tokens)),
            (self.requests_per_day, 1.0),
        ]
        return [(bucket, amount) for bucket, amount in pairs if bucket is not None]

    def check_size(self, tokens: int) -> None:
        """Raise TooLarge when `tokens` exceed what the TPM bucket can ever hold."""
        bucket = self.tokens_per_minute
        if bucket is not None and tokens > bucket.capacity:
            raise TooLarge(tokens, bucket.capacity)

    def _take_now(self, tokens: int) -> float:
        """Take one request and `tokens` tokens if every bucket has them now and returns 0;
        else takes nothing and returns how long until they are there."""
        now = self._clock()
        needs = self._needs(tokens)
        for bucket, _ in needs:
            bucket.refill(now)
        wait = max([self._paused_until - now, *(b.wait_for(a) for b, a in needs)])
        if wait <= 0:
            for bucket, amount in needs:
                bucket.take(amount)
        return wait

    def try_acquire(self, tokens: int) -> bool:
        """Take one request and `tokens` tokens if every bucket has them now and nobody is
        waiting in `acquire`; False (taking nothing) otherwise."""
        if self._lock.locked():
            return False
        self.check_size(tokens)
        return self._take_now(tokens) <= 0

    async def acquire(self, tokens: int) -> None:
        """Wait until one request and `tokens` tokens are free in every bucket, then take them.

        Raises TooLarge when `tokens` exceed the TPM capacity (also if a header lowers the
        capacity while waiting), since such a request would wait forever.
        """
        self.check_size(tokens)
        async with self._lock:
            while True:
                self.check_size(tokens)
                wait = self._take_now(tokens)
                if wait <= 0:
                    return
                await self._sleep(wait)

    def refund(self, tokens: int) -> None:
        """Give back what `acquire(tokens)` took (never above a bucket's capacity)."""
        now = self._clock()
        for bucket, amount in self._needs(tokens):
            bucket.refill(now)
            bucket.give_back(amount)

    def day_left(self) -> float | None:
        """Requests the requests-per-day bucket holds now (None without a daily limit)."""
        bucket = self.requests_per_day
        if bucket is None:
            return None
        elapsed = max(0.0, self._clock() - bucket.stamp)
        return min(float(bucket.capacity), bucket.level + elapsed * bucket.rate)

    def spent_today(self, requests: int) -> None:
        """Take `requests` already sent in the last day (by earlier processes) out of the
        requests-per-day bucket."""
        bucket = self.requests_per_day
        if bucket is not None and requests > 0:
            bucket.refill(self._clock())
            bucket.cap_level(bucket.capacity - float(requests))

    def day_wait(self) -> float:
        """Seconds until the requests-per-day bucket lets one more request through (0 now)."""
        bucket = self.requests_per_day
        if bucket is None:
            return 0.0
        bucket.refill(self._clock())
        return bucket.wait_for(1.0)

    def pause(self, seconds: float) -> None:
        """Let no acquisition through for `seconds` from now (extends, never shortens, a pause)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def observe(self, headers: Mapping[str, str]) -> None:
        """Correct the buckets from `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.

        A limit lower than the configured one wins (a limit for a bucket that is not configured
        creates it); the level never stays above what the server says remains. A reset duration
        stands in for a missing remaining count: the bucket is that far from full.
        """
        lowered = {key.lower(): value for key, value in headers.items()}
        now = self._clock()
        for kind in ("requests", "tokens"):
            attribute = "requests_per_minute" if kind == "requests" else "tokens_per_minute"
            bucket: TokenBucket | None = getattr(self, attribute)
            limit = _number(lowered.get(f"x-ratelimit-limit-{kind}"))
            if limit is not None and limit >= 1:
                if bucket is None:
                    bucket = TokenBucket(int(limit), MINUTE_S, now)
                    setattr(self, attribute, bucket)
                else:
                    bucket.refill(now)
                    bucket.lower_limit(int(limit))
            if bucket is None:
                continue
            bucket.refill(now)
            remaining = _number(lowered.get(f"x-ratelimit-remaining-{kind}"))
            reset = lowered.get(f"x-ratelimit-reset-{kind}")
            if remaining is not None:
                bucket.cap_level(remaining)
            elif reset is not None:
                try:
                    seconds = parse_duration(reset)
                except ValueError:
                    continue
                bucket.cap_level(bucket.capacity - seconds * bucket.rate)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (seconds or an HTTP date)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    with contextlib.suppress(ValueError):
        milliseconds = float(lowered.get("retry-after-ms", ""))
        if 0 <= milliseconds < math.inf:
            return milliseconds / 1000
    value = lowered.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return seconds if 0 <= seconds < math.inf else None
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _bucket(limit: int | None, period_s: float, now: float) -> TokenBucket | None:
    return None if not limit or limit <= 0 else TokenBucket(limit, period_s, now)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
