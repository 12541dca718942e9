"""Where the real-time lane's requests come from: a fixed list, or a source the batch lane
shares (see batchpilot.run.share)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from batchpilot.errors import IllegalTransition
from batchpilot.store import PendingRequest

__all__ = ["Feed", "ListedFeed"]


class Feed(Protocol):
    """Where the lane's requests come from.

    `next()` names the request to send next (None: none for now; `done`: none ever again);
    `affordable(worst)` says whether the money left covers a worst case; `claim(request,
    worst)` moves that request pending → realtime and holds its worst case, returning None, or
    says why it did not ("gone": not the feed's to give any more, "budget"); `release(worst)`
    gives the worst case back once the request has ended. When the money runs out with nothing
    in flight, a feed that `waits` keeps the lane waiting; otherwise the lane returns.

    The lane claims several requests in one store transaction inside `claiming()`: the lock a
    feed's claims take, held before the transaction begins (the order of every other holder
    of that lock that writes to the store).
    """

    @property
    def done(self) -> bool: ...

    @property
    def waits(self) -> bool: ...

    def next(self) -> PendingRequest | None: ...

    def affordable(self, worst: float) -> bool: ...

    def claim(self, request: PendingRequest, worst: float) -> str | None: ...

    def release(self, worst: float) -> None: ...

    def claiming(self) -> AbstractContextManager[object]: ...


class ListedFeed:
    """A fixed list of pending requests, in order, within the lane's own budget: `fits(worst)`
    says whether the money left covers a worst case, `take(request_id)` moves a request
    pending → realtime in the store."""

    waits = False

    def __init__(
        self,
        requests: Sequence[PendingRequest],
        fits: Callable[[float], bool],
        take: Callable[[str], bool],
    ) -> None:
        self._queue = deque(requests)
        self._fits = fits
        self._take = take

    @property
    def done(self) -> bool:
        return not self._queue

    def next(self) -> PendingRequest | None:
        return self._queue[0] if self._queue else None

    def affordable(self, worst: float) -> bool:
        return self._fits(worst)

    def claim(self, request: PendingRequest, worst: float) -> str | None:
        if not self._fits(worst):
            return "budget"
        self._queue.popleft()
        if not self._take(request.id):
            raise IllegalTransition(f"request {request.id}: was not pending when it was taken")
        return None

    def release(self, worst: float) -> None:
        return None

    def claiming(self) -> AbstractContextManager[object]:
        return nullcontext()
