"""One token bucket, for the real-time lane's client-side limits (`lanes/ratelimit.py`) and
the local server's (`server/ratelimit.py`).

A bucket holds up to `capacity` units and refills at `capacity` per `period_s`, on whatever
clock its caller reads (wall time in the lane, the virtual clock in the server). It never
sleeps and takes no lock: its owner decides how to wait and guards it. The lane also moves
its level and capacity from the `x-ratelimit-*` headers of each answer (`lower_limit`,
`cap_level`) and gives back what a request did not use (`give_back`); the rate-limit
libraries on PyPI (aiolimiter, pyrate-limiter, limits) offer neither, hence this small class.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]

_EPSILON = 1e-9


class TokenBucket:
    def __init__(self, capacity: int, period_s: float, now: float) -> None:
        self.period_s = period_s
        self.capacity = capacity
        self.level = float(capacity)
        self.stamp = now

    @property
    def rate(self) -> float:
        """Units refilled per second."""
        return self.capacity / self.period_s

    def refill(self, now: float) -> None:
        """Add what `now - stamp` refilled (a clock that went back adds nothing)."""
        if now > self.stamp:
            self.level = min(float(self.capacity), self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits, from the level as last refilled (0: it fits now)."""
        short = amount - self.level
        return 0.0 if short <= _EPSILON else short / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        """Return `amount` taken earlier, never above the capacity."""
        self.level = min(float(self.capacity), self.level + amount)

    def cap_level(self, level: float) -> None:
        """Hold no more than `level` (what a server says remains)."""
        self.level = min(self.level, max(0.0, level))

    def lower_limit(self, limit: int) -> None:
        """A lower capacity wins (a server's stated limit below the configured one)."""
        if 0 < limit < self.capacity:
            self.capacity = limit
            self.level = min(self.level, float(limit))

    def reset_in(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.capacity - self.level) / self.rate
