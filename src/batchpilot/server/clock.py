"""A virtual clock: time that runs `scale` times faster than real time and can be advanced."""

from __future__ import annotations

import threading
import time

__all__ = ["VirtualClock"]


class VirtualClock:
    """Unix-seconds time that runs `scale` times faster than the wall clock.

    `start` is the virtual time at creation (a restarted server passes the time it had reached,
    so that virtual time never runs backwards). `advance()` jumps ahead at once.
    """

    def __init__(self, scale: float = 1.0, start: float | None = None) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale
        self._lock = threading.Lock()
        self._base = time.time() if start is None else max(start, time.time())
        self._mono = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        with self._lock:
            return self._base + (time.monotonic() - self._mono) * self.scale + self._offset

    def advance(self, seconds: float) -> float:
        """Jump `seconds` of virtual time ahead; returns the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

    def to_real(self, virtual_seconds: float) -> float:
        """How many wall-clock seconds a span of virtual time takes."""
        return virtual_seconds / self.scale
