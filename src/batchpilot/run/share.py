"""What the two lanes of a run share across threads, and the thread the real-time lane runs in.

The batch lane (the runner's thread) takes pending requests from the front of the input, the
real-time lane (a thread of its own, with its own event loop; the store serves any thread) from
the end. Both take them under one lock, so a request is taken by one lane only (never paying
twice), and each lane's money check and reservation are one step with respect to the other's.

A run driven by several workers at once (`worker` set) counts its money in the store instead:
every worker's batches and requests in flight hold their worst cases there (`Store.holdings`),
and each check and what it takes are one transaction with the run locked (`Store.lock_run`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from contextlib import AbstractContextManager

from batchpilot.lanes.realtime import IDLE_S, LaneReport, RealtimeLane
from batchpilot.store import PendingRequest, Store

__all__ = ["LaneShare", "LaneThread"]

_EPSILON = 1e-12


class LaneShare:
    """How many pending requests the real-time lane may still take (`reserve`; None: every one),
    and the money held outside the store: worst cases of real-time requests in flight
    (`inflight_usd`) and of batches formed but not yet created (`held_usd`).

    Hold `lock` to read pending requests and take some of them, and to check money and reserve
    some; `wake` is set whenever a real-time request ends. With `worker`, the money left is the
    store's, over every worker of the run.
    """

    def __init__(
        self,
        run_id: str,
        budget_usd: float | None,
        wake: threading.Event,
        worker: str | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.run_id = run_id
        self.budget_usd = budget_usd
        self.wake = wake
        self.worker = worker
        self.reserve: int | None = 0
        self.claimed = 0
        self.inflight_usd = 0.0
        self.held_usd = 0.0
        self.short_of: float | None = None

    def money_left(self, store: Store) -> float | None:
        """The budget less what is spent and every reservation of both lanes (lock held)."""
        if self.budget_usd is None:
            return None
        if self.worker is not None:
            return self.budget_usd - sum(store.holdings(self.run_id))
        spent, reserved = store.money(self.run_id)
        return self.budget_usd - spent - reserved - self.inflight_usd - self.held_usd

    def held_elsewhere(self, store: Store) -> bool:
        """Whether money may come back without this lane's batches: a real-time request in
        flight, or (with co-drivers) another worker's batch formed or request in flight."""
        if self.inflight_usd > _EPSILON:
            return True
        if self.worker is None:
            return False
        _, _, held, inflight = store.holdings(self.run_id)
        return held - self.held_usd > _EPSILON or inflight > _EPSILON

    def batch_room(self, store: Store) -> int:
        """How many pending requests batches may take now (lock held)."""
        if self.reserve is None:
            return 0
        if self.reserve == 0:
            return sys.maxsize
        count = store.request_counts(self.run_id).get("pending", 0)
        return max(0, count - self.reserve)

    def stuck(self, store: Store) -> bool:
        """The real-time lane waits for money that nothing in flight will give back."""
        with self.lock:
            if self.reserve == 0 or self.short_of is None or self.held_elsewhere(store):
                return False
            left = self.money_left(store)
            return left is not None and self.short_of > left + _EPSILON

    def feed(self, store: Store) -> ShareFeed:
        return ShareFeed(self, store)


class ShareFeed:
    """The real-time lane's side of a LaneShare, reading through the lane thread's store."""

    done = False
    waits = True

    def __init__(self, share: LaneShare, store: Store) -> None:
        self._share = share
        self._store = store

    def next(self) -> PendingRequest | None:
        share = self._share
        last = [] if share.reserve == 0 else self._store.pending(share.run_id, 1, from_end=True)
        if not last:
            share.short_of = None  # the lane wants nothing now, money or not
            return None
        return last[0]

    def affordable(self, worst: float) -> bool:
        share = self._share
        with share.lock:
            left = share.money_left(self._store)
            if left is not None and worst > left + _EPSILON:
                share.short_of = worst
                return False
            return True

    def claim(self, request: PendingRequest, worst: float) -> str | None:
        share = self._share
        with share.lock:
            if share.reserve == 0:
                return "gone"
            if not self.affordable(worst):
                return "budget"
            budget = None if share.worker is None else share.budget_usd
            if not self._store.claim_realtime(
                share.run_id, request.id, worker=share.worker, held_usd=worst, budget_usd=budget
            ):
                if budget is not None and not self.affordable(worst):
                    return "budget"  # another worker took the money first
                return "gone"  # a batch took it (or an ingest changed it) while the lane waited
            share.short_of = None
            share.inflight_usd += worst
            share.claimed += 1
            if share.reserve is not None:
                share.reserve -= 1
            return None

    def release(self, worst: float) -> None:
        share = self._share
        with share.lock:
            share.inflight_usd -= worst
        share.wake.set()

    def claiming(self) -> AbstractContextManager[object]:
        return self._share.lock


class LaneThread:
    """The real-time lane serving a LaneShare in a thread of its own until `close()` or `stop`.

    The lane's client is used, and closed, on this thread's event loop only. An exception the
    lane raises (a refused key) is kept in `error` for the runner's thread to raise.
    """

    def __init__(
        self, lane: RealtimeLane, share: LaneShare, store: Store, stop: threading.Event
    ) -> None:
        self._lane = lane
        self._share = share
        self._store = store
        self._stop = stop
        self._halt = threading.Event()
        self._serving: RealtimeLane | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="batchpilot-realtime", daemon=True)

    @property
    def report(self) -> LaneReport:
        lane = self._serving
        return LaneReport() if lane is None else lane.report

    def start(self) -> None:
        self._thread.start()

    def close(self) -> LaneReport:
        """Stop taking requests, let those on the wire finish, and wait for the thread."""
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.report

    def _main(self) -> None:
        store = self._store
        loop = asyncio.new_event_loop()
        lane = self._serving = self._lane
        try:
            loop.run_until_complete(self._serve(lane, store))
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                loop.run_until_complete(lane.api.aclose())
            finally:
                loop.close()
                self._share.wake.set()

    async def _serve(self, lane: RealtimeLane, store: Store) -> None:
        stop = asyncio.Event()

        async def watch() -> None:
            while not (self._halt.is_set() or self._stop.is_set()):
                await asyncio.sleep(IDLE_S)
            stop.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await lane.serve(self._share.feed(store), stop)
        finally:
            watcher.cancel()
