"""The one token bucket that the real-time lane and the local server both pace with."""

from __future__ import annotations

import pytest

from batchpilot.lanes.ratelimit import RateLimits, Throttle
from batchpilot.server import RateLimit
from batchpilot.server.ratelimit import RateLimiter
from batchpilot.tokenbucket import TokenBucket


def test_a_bucket_refills_at_its_rate_and_never_past_its_capacity() -> None:
    bucket = TokenBucket(60, 60.0, now=0.0)
    bucket.take(60)
    assert bucket.wait_for(1) == pytest.approx(1.0)
    bucket.refill(0.5)
    assert bucket.level == pytest.approx(0.5)
    bucket.refill(0.25)  # a clock that went back adds nothing
    assert (bucket.level, bucket.stamp) == (pytest.approx(0.5), 0.5)
    assert bucket.reset_in() == pytest.approx(59.5)
    bucket.refill(1000.0)
    assert bucket.level == 60.0
    assert bucket.wait_for(60) == 0.0


def test_header_corrections_lower_and_cap_but_never_raise() -> None:
    bucket = TokenBucket(100, 60.0, now=0.0)
    bucket.lower_limit(200)
    assert bucket.capacity == 100
    bucket.lower_limit(50)
    assert (bucket.capacity, bucket.level) == (50, 50.0)
    bucket.cap_level(80)
    assert bucket.level == 50.0
    bucket.cap_level(-5)
    assert bucket.level == 0.0
    bucket.give_back(70)
    assert bucket.level == 50.0


def test_the_lane_and_the_server_pace_with_the_same_bucket() -> None:
    gate = Throttle(RateLimits(rpm=10, tpm=1000, rpd=100))
    assert isinstance(gate.requests_per_minute, TokenBucket)
    assert isinstance(gate.tokens_per_minute, TokenBucket)
    limiter = RateLimiter({"m": RateLimit(rpm=2)})
    assert limiter.check("m", 5, now=0.0).allowed
    assert limiter.check("m", 5, now=0.0).allowed
    refused = limiter.check("m", 5, now=0.0)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(30.0)
    assert all(isinstance(bucket, TokenBucket) for bucket in limiter._buckets.values())
