"""Where the real-time lane's requests come from: a fixed list, or a source the batch lane
shares (see batchpilot.run.share)."""

from __future__ import annotations

from typing import Protocol

from batchpilot.store import PendingRequest

__all__ = ["Feed"]


class Feed(Protocol):
    """Where the lane's requests come from.

    `next()` names the request to send next (None: none for now; `done`: none ever again);
    `affordable(worst)` says whether the money left covers a worst case; `claim(request,
    worst)` moves that request pending → realtime and holds its worst case, returning None, or
    says why it did not ("gone": not the feed's to give any more, "budget"); `release(worst)`
    gives the worst case back once the request has ended. When the money runs out with nothing
    in flight, a feed that `waits` keeps the lane waiting; otherwise the lane returns.
    """

    @property
    def done(self) -> bool: ...

    @property
    def waits(self) -> bool: ...

    def next(self) -> PendingRequest | None: ...

    def affordable(self, worst: float) -> bool: ...

    def claim(self, request: PendingRequest, worst: float) -> str | None: ...

    def release(self, worst: float) -> None: ...
