"""The real-time lane: requests sent one by one through a provider's RealtimeAPI, within rate
limits.

Same store, request ids, budget and retry policy as the batch lane. Requests come from a feed:
a fixed list (`run`), or a source that the batch lane shares (`serve`, see batchpilot.run.share).
A request moves pending → realtime once the throttle lets it through (so a feed may still give
it to the batch lane while it waits), and its outcome is committed as its answer arrives, so a
crash loses nothing already answered. Answers are committed in groups, in one transaction
each: a group closes when a quarter of the slots (or every request on the wire) has answered,
or COMMIT_WINDOW_S after its first answer, and no request gives back its slot or its hold on
the budget before its answer is committed. A crash inside that window leaves the request in
state `realtime`, handled like any try in flight (below). Requests that may all go at once are
claimed together too, in one transaction. 429, 408, 409, 5xx, timeouts and lost
connections are retried in place with exponential backoff and jitter (a `retry-after` wins, and
a 429 pauses the whole throttle); every try is one attempt under the RetryPolicy cap, recorded in
the store as it ends. Other 4xx fail the request for good with the server's message; 401 and 403
stop the lane with its requests back in pending, since every request would be refused alike.

At the flex tier (`tier="flex"`) every try asks for OpenAI's `service_tier: "flex"`: answered at
batch prices, slower, and sometimes refused with 429 `resource_unavailable`. Such a refusal is
no rate limit: that request alone backs off (the throttle is not paused) and tries again at
flex, unless the deadline is within `flex_fallback_s` or its next try is its last: then it goes
at the standard tier, so that a refusal never costs a request its answer. Tries at the flex
tier are recorded on the lane `flex`.

A try that may have run without its answer coming back (a timeout, a connection lost after
sending, a crash or a stop while it was on the wire) is recorded as an attempt that cost the
request's worst case: the real-time API offers no way to look up an earlier call, so what it
may have billed stays counted. A crash leaves the requests that were in flight in state
`realtime`; `recover_inflight` (called by the runner on start) records each such try so, and
moves the request back to pending, or fails it once it has used its attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from batchpilot.formatting import usd
from batchpilot.lanes.feed import Feed, ListedFeed
from batchpilot.lanes.inflight import interrupted, recover_inflight
from batchpilot.lanes.ratelimit import RateLimits, Throttle, TooLarge, retry_after
from batchpilot.plan.worst import reservation
from batchpilot.pricing import PriceTable, usage_cost
from batchpilot.providers.base import (
    FLEX,
    STANDARD,
    Answer,
    AuthenticationFailed,
    CallFailed,
    RealtimeAPI,
)
from batchpilot.store import Outcome, PendingRequest, RequestState, Store

if TYPE_CHECKING:  # at run time the import would be circular: batchpilot.run imports lanes
    from batchpilot.run.ingest import RetryPolicy

__all__ = [
    "Feed",
    "LaneReport",
    "RealtimeLane",
    "interrupted",
    "recover_inflight",
]

IDLE_S = 0.02  # how often a lane with nothing to take looks at its feed again
COMMIT_WINDOW_S = 0.02  # how long an answer waits for others to share its commit


@dataclass
class LaneReport:
    """What one `RealtimeLane.run` did. `requeued` requests went back to pending unsent;
    `budget_stopped`: the budget held the lane back (a waiting feed: and still does);
    `flex_refused`: tries the flex tier refused for want of capacity; `flex_fallbacks`: requests
    sent at the standard tier instead."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    http_429: int = 0
    flex_refused: int = 0
    flex_fallbacks: int = 0
    requeued: int = 0
    spent_usd: float = 0.0
    budget_stopped: bool = False
    stopped: bool = False


@dataclass(frozen=True)
class _Failure:
    reason: str
    retryable: bool
    status: int | None = None
    retry_after_s: float | None = None
    headers: Mapping[str, str] | None = None
    billed: tuple[int, int, float] = (0, 0, 0.0)  # an answer that came back but failed a check
    unavailable: bool = False  # the flex tier had no capacity
    lane: str | None = None


class RealtimeLane:
    """Sends requests concurrently (at most `concurrency` in flight) within `limits`, through
    `api` (which does not retry: the lane retries, so that every try is counted and paced), at
    the service `tier` (`standard` or `flex`; flex falls back to standard once the wall-clock
    `deadline` is within `flex_fallback_s`).
    """

    def __init__(
        self,
        api: RealtimeAPI,
        store: Store,
        run_id: str,
        *,
        limits: RateLimits,
        concurrency: int = 16,
        timeout_s: float | None = None,
        prices: PriceTable | None = None,
        retry: RetryPolicy,
        budget_usd: float | None = None,
        max_backoff_s: float = 60.0,
        base_backoff_s: float = 0.5,
        throttle: Throttle | None = None,
        check: Callable[[PendingRequest, dict[str, Any]], str | None] | None = None,
        tier: str = STANDARD,
        deadline: datetime | None = None,
        flex_fallback_s: float = 900.0,
        shared_rate: Callable[[str, int], float] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if tier not in (STANDARD, FLEX):
            raise ValueError(f"unknown service tier {tier!r}: use standard or flex")
        self.tier = tier
        self.deadline = deadline
        self.flex_fallback_s = flex_fallback_s
        self.api = api
        self.store = store
        self.run_id = run_id
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.prices = prices
        self.retry = retry
        self.budget_usd = budget_usd
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.throttle = throttle or Throttle(limits)
        self.check = check
        self.shared_rate = shared_rate
        self._rng = random.Random()
        self._inflight_usd = 0.0
        self._report = LaneReport()
        self._outbox: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._commit_timer: asyncio.TimerHandle | None = None
        self._live = 0  # requests taken whose task has not ended
        self._halt: asyncio.Event | None = None
        self._stop_waiter: asyncio.Future[Any] | None = None
        self._auth_error: str | None = None
        self._failure: BaseException | None = None

    def recall_day(self) -> None:
        """Count the real-time requests the store saw in the last day (earlier processes,
        other runs of the same models) against the requests-per-day limit."""
        if self.throttle.requests_per_day is not None:
            self.throttle.spent_today(self.store.realtime_sent_last_day(self.run_id))

    @property
    def report(self) -> LaneReport:
        """What the current (or last) `run` or `serve` has done so far."""
        return self._report

    # the loop -------------------------------------------------------------------------------

    async def run(
        self, requests: Sequence[PendingRequest], stop: asyncio.Event | None = None
    ) -> LaneReport:
        """Send `requests` (all pending) and record each outcome as it arrives.

        Returns when every taken request has ended, when `stop` is set (requests still waiting
        for the throttle stay pending; those on the wire finish), or when the budget cannot
        cover the next request's worst case even with nothing in flight (`budget_stopped`).
        Raises AuthenticationFailed, after the in-flight requests end, if the key is refused.
        """
        feed = ListedFeed(
            requests,
            self._fits,
            lambda request_id: self.store.claim_realtime(self.run_id, request_id),
        )
        return await self.serve(feed, stop)

    async def serve(self, feed: Feed, stop: asyncio.Event | None = None) -> LaneReport:
        """Send what `feed` hands out, as `run` does, until the feed is done or `stop` is set.

        A request is taken from the feed (pending → realtime) only once the throttle lets it
        through, so it never waits in `realtime` for the rate limits, and the feed may change
        its mind about it until then. A feed that `waits` keeps the lane waiting for money
        instead of returning when the budget runs out.
        """
        self._report = LaneReport()
        self._auth_error = None
        self._failure = None
        self._inflight_usd = 0.0
        halt = self._halt = asyncio.Event()
        self._stop_waiter = asyncio.ensure_future(halt.wait())
        relay = None if stop is None else asyncio.ensure_future(_relay(stop, halt))
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            await self._dispatch(feed, slots, tasks)
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            for waiter in (self._stop_waiter, relay):
                if waiter is not None:
                    waiter.cancel()
            self._stop_waiter = self._halt = None
        self._report.stopped = stop is not None and stop.is_set()
        if self._failure is not None:
            raise self._failure
        if self._auth_error is not None:
            self.store.event(self.run_id, "error", self._auth_error)
            raise AuthenticationFailed(self._auth_error)
        return self._report

    async def _dispatch(
        self, feed: Feed, slots: asyncio.Semaphore, tasks: set[asyncio.Task[None]]
    ) -> None:
        while not self._halted():
            if not slots.locked():
                await slots.acquire()  # free: taken without a turn of the event loop
            elif not await self._until(slots.acquire()):
                return
            free = 1
            while not slots.locked():
                await slots.acquire()
                free += 1
            group = self._take_ready(feed, free)
            for _ in range(free - max(1, len(group))):
                slots.release()
            if not group:
                taken = await self._take(feed, tasks)
                if taken is None:
                    slots.release()
                    return
                self._inflight_usd += taken[1]
                group = [taken]
            for request, worst, paced in group:
                self._live += 1
                task = asyncio.create_task(self._serve(request, worst, paced, slots, feed))
                tasks.add(task)
                task.add_done_callback(lambda done: self._ended(done, tasks))

    def _take_ready(self, feed: Feed, most: int) -> list[tuple[PendingRequest, float, bool]]:
        """Up to `most` requests taken from the feed in one store transaction, as long as
        nothing stands in the way of the next (the budget, the throttle, the account's rates);
        each one's worst case is counted in flight."""
        group: list[tuple[PendingRequest, float, bool]] = []
        with contextlib.ExitStack() as claiming:
            while len(group) < most and not self._halted():
                ready = self._ready(feed)
                if ready is None:
                    break
                request, worst, tokens = ready
                if not group:
                    claiming.enter_context(feed.claiming())
                    claiming.enter_context(self.store.tx())
                if feed.claim(request, worst) is not None:
                    self.throttle.refund(tokens)
                    break
                self._report.budget_stopped = False
                self._inflight_usd += worst
                group.append((request, worst, True))
        return group

    def _ready(self, feed: Feed) -> tuple[PendingRequest, float, int] | None:
        """The feed's next request, its worst case and its tokens, with the throttle's and the
        account's share taken for it, if it can go now; None if it would have to wait."""
        request = feed.next()
        if request is None:
            return None
        worst = self._worst_cost(request)
        if not feed.affordable(worst):
            return None
        tokens = request.input_tokens + _max_output(request)
        try:
            if not self.throttle.try_acquire(tokens):
                return None
        except TooLarge:
            return None
        if self.shared_rate is not None and self.shared_rate(request.model, tokens) > 0:
            self.throttle.refund(tokens)
            return None
        return request, worst, tokens

    def _ended(self, task: asyncio.Task[None], tasks: set[asyncio.Task[None]]) -> None:
        """A request's task is over; an exception it raised stops the lane and is raised by
        `serve` (the request stays in `realtime`, as after a crash)."""
        tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._failure is None:
            self._failure = task.exception()
        self._stop_now()

    def _stop_now(self) -> None:
        if self._halt is not None:
            self._halt.set()

    async def _take(
        self, feed: Feed, tasks: set[asyncio.Task[None]]
    ) -> tuple[PendingRequest, float, bool] | None:
        """The next request, taken from the feed once the throttle and the budget let it go;
        with whether its first try is already paced. None when the lane is to stop."""
        while not self._halted():
            request = feed.next()
            if request is None:
                if feed.done or not await self._until(asyncio.sleep(IDLE_S)):
                    return None
                continue
            worst = self._worst_cost(request)
            if not feed.affordable(worst):
                if not await self._wait_for_money(feed, request, worst, tasks):
                    return None
                continue
            tokens = request.input_tokens + _max_output(request)
            try:
                self.throttle.check_size(tokens)
            except TooLarge:
                # taken unpaced: its first try fails it without sending anything
                if feed.claim(request, worst) is None:
                    return request, worst, False
                continue
            if not await self._pace(request.model, tokens):
                return None
            if feed.claim(request, worst) is None:
                self._report.budget_stopped = False
                return request, worst, True
            self.throttle.refund(tokens)
        return None

    async def _wait_for_money(
        self, feed: Feed, request: PendingRequest, worst: float, tasks: set[asyncio.Task[None]]
    ) -> bool:
        """Wait until an answer in flight settles, or, with nothing in flight, say so and wait
        (or give up, for a feed that does not wait); False when the lane is to stop."""
        if tasks:
            waiters: set[asyncio.Future[Any]] = set(tasks)
            if self._stop_waiter is not None:
                waiters.add(self._stop_waiter)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            return not self._halted()
        if not self._report.budget_stopped:
            self._report.budget_stopped = True
            budget = "" if self.budget_usd is None else f" of {usd(self.budget_usd)}"
            verb = "is waiting" if feed.waits else "stopped"
            self.store.event(
                self.run_id,
                "budget",
                f"real-time lane {verb}: the budget{budget} cannot cover the worst case "
                f"({usd(worst)}) of request {request.id}",
            )
        return feed.waits and await self._until(asyncio.sleep(IDLE_S))

    def _halted(self) -> bool:
        return self._halt is not None and self._halt.is_set()

    def _fits(self, worst: float) -> bool:
        if self.budget_usd is None:
            return True
        spent, reserved = self.store.money(self.run_id)
        return spent + reserved + self._inflight_usd + worst <= self.budget_usd + 1e-12

    async def _serve(
        self,
        request: PendingRequest,
        worst: float,
        paced: bool,
        slots: asyncio.Semaphore,
        feed: Feed,
    ) -> None:
        try:
            await self._attempts(request, paced)
        finally:
            self._live -= 1
            self._inflight_usd -= worst
            feed.release(worst)
            slots.release()

    async def _pace(self, model: str, tokens: int) -> bool:
        """Wait until the throttle and the account's rates shared by every run (`shared_rate`)
        let one try of `tokens` through; False when the lane stops first."""
        throttle = self.throttle
        while throttle.try_acquire(tokens) or await self._until(throttle.acquire(tokens)):
            wait = 0.0 if self.shared_rate is None else self.shared_rate(model, tokens)
            if wait <= 0:
                return True
            self.throttle.refund(tokens)
            # asked again each second: a limit raised meanwhile (`batchpilot limits`) counts
            if not await self._until(asyncio.sleep(min(wait, 1.0))):
                return False
        return False

    async def _until(self, work: Coroutine[Any, Any, object]) -> bool:
        """Await `work` unless the stop event comes first; True when `work` completed."""
        waiter = self._stop_waiter
        if waiter is None:
            await work
            return True
        if waiter.done():
            work.close()
            return False
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    # one request ----------------------------------------------------------------------------

    async def _attempts(self, request: PendingRequest, paced: bool) -> None:
        """Try `request` until it succeeds, fails for good, or the lane stops; `paced` when
        the throttle has already let its first try through."""
        try:
            call = self._prepare(request)
        except ValueError as exc:
            self._finish(Outcome(request.id, RequestState.FAILED, error=str(exc), attempted=False))
            return
        tokens = request.input_tokens + _max_output(request)
        attempts, tries = request.attempts, 0
        tier = self._tier_for(attempts)
        on_wire = settled = False
        try:
            while True:
                try:
                    if paced:
                        paced = False
                    elif not await self._pace(request.model, tokens):
                        self._requeue(request)
                        return
                except TooLarge as exc:
                    self._finish(
                        Outcome(request.id, RequestState.FAILED, error=str(exc), attempted=False)
                    )
                    return
                on_wire = True
                failure = await self._send(request, call, tier)
                on_wire = False
                if isinstance(failure, Outcome):
                    settled = True
                    await self._record(failure)
                    return
                if failure.headers is not None:
                    self.throttle.observe(failure.headers)
                if failure.status in (401, 403):
                    self._auth_error = failure.reason
                    self._stop_now()
                    self._requeue(request, failure.reason)
                    return
                state = self.retry.next_state(
                    request._replace(attempts=attempts), failure.retryable, True
                )
                if state != RequestState.PENDING:
                    settled = True
                    await self._record(
                        Outcome(
                            request.id,
                            RequestState.FAILED,
                            None,
                            *failure.billed,
                            error=failure.reason,
                            lane=failure.lane,
                        )
                    )
                    return
                with self.store.tx():
                    self._report.spent_usd += failure.billed[2]
                    self.store.record_attempt(
                        self.run_id,
                        Outcome(
                            request.id,
                            RequestState.PENDING,
                            None,
                            *failure.billed,
                            error=failure.reason,
                            lane=failure.lane,
                        ),
                    )
                attempts, tries = attempts + 1, tries + 1
                self._report.retried += 1
                delay = self._backoff(tries, failure.retry_after_s)
                if failure.unavailable:
                    self._report.flex_refused += 1
                    if tier == FLEX and self._tier_for(attempts, delay) == STANDARD:
                        tier = STANDARD
                        self._report.flex_fallbacks += 1
                        delay = 0.0
                    if not await self._until(asyncio.sleep(delay)):
                        self._requeue(request, failure.reason)
                        return
                elif failure.status == 429:
                    self.throttle.pause(delay)
                elif not await self._until(asyncio.sleep(delay)):
                    self._requeue(request, failure.reason)
                    return
        except asyncio.CancelledError:
            if settled:  # `_record` wrote its outcome before letting the cancellation through
                raise
            if on_wire:
                self._finish(
                    interrupted(request._replace(attempts=attempts), self.prices, self.retry)
                )
            else:
                self._requeue(request)
            raise

    async def _send(
        self,
        request: PendingRequest,
        call: Callable[[str], Awaitable[Answer | CallFailed]],
        tier: str,
    ) -> _Failure | Outcome:
        """One try at `tier`: the success to record, or what went wrong."""
        # a try that may have run though no answer came back is billed at its worst case
        unknown = (0, 0, self._worst_cost(request))
        lane = FLEX if tier == FLEX else None
        outcome = await call(tier)
        if isinstance(outcome, CallFailed):
            if outcome.status == 429:
                self._report.http_429 += 1
            headers = outcome.headers if outcome.status is not None else None
            # a refusal for want of flex capacity says when to come back only in its headers
            retry_s = None if headers is None else retry_after(headers)
            return _Failure(
                outcome.reason,
                outcome.retryable,
                status=outcome.status,
                retry_after_s=retry_s,
                headers=None if outcome.unavailable else outcome.headers,
                billed=unknown if outcome.may_have_run else (0, 0, 0.0),
                unavailable=outcome.unavailable,
                lane=lane,
            )
        self.throttle.observe(outcome.headers)
        body = outcome.body
        at_flex = tier == FLEX and body.get("service_tier") in (None, FLEX)
        input_tokens, output_tokens, usd = self._cost(request, body, flex=at_flex)
        lane = FLEX if at_flex else None
        reason = self.check(request, body) if self.check is not None else None
        if reason is not None:
            return _Failure(reason, True, billed=(input_tokens, output_tokens, usd), lane=lane)
        return Outcome(
            request.id,
            RequestState.SUCCEEDED,
            body,
            input_tokens,
            output_tokens,
            usd,
            lane=lane,
        )

    def _tier_for(self, attempts: int, wait_s: float = 0.0) -> str:
        """The tier of a request's next try, `wait_s` from now with `attempts` made: flex,
        unless the lane runs at the standard tier, the try is the request's last, or the
        deadline is within `flex_fallback_s` by then."""
        if self.tier != FLEX or attempts + 1 >= self.retry.max_attempts:
            return STANDARD
        if self.deadline is not None:
            due = datetime.now(UTC) + timedelta(seconds=wait_s + self.flex_fallback_s)
            if due >= self.deadline:
                return STANDARD
        return FLEX

    async def _record(self, outcome: Outcome) -> None:
        """Commit `outcome` together with the others that arrive within COMMIT_WINDOW_S of
        the first (at once when a quarter of the slots, or every request still taken, has one
        waiting); returns once it is committed. Cancelled while it waits, it commits at once."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._outbox.append((outcome, future))
        waiting = len(self._outbox)
        if waiting >= self.concurrency // 4 or waiting >= self._live:
            self._commit_outbox()
        elif self._commit_timer is None:
            self._commit_timer = loop.call_later(COMMIT_WINDOW_S, self._commit_outbox)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            self._commit_outbox()
            raise

    def _commit_outbox(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        waiting, self._outbox = self._outbox, []
        if not waiting:
            return
        try:
            self.store.finish_realtime(self.run_id, *(outcome for outcome, _ in waiting))
        except BaseException as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for outcome, future in waiting:
            self._count(outcome)
            if not future.done():
                future.set_result(None)

    def _finish(self, outcome: Outcome) -> None:
        self.store.finish_realtime(self.run_id, outcome)
        self._count(outcome)

    def _count(self, outcome: Outcome) -> None:
        if outcome.state == RequestState.SUCCEEDED:
            self._report.succeeded += 1
            self._report.spent_usd += outcome.cost_usd
        elif outcome.state == RequestState.FAILED:
            self._report.failed += 1

    def _requeue(self, request: PendingRequest, reason: str | None = None) -> None:
        self.store.finish_realtime(
            self.run_id,
            Outcome(request.id, RequestState.PENDING, error=reason, attempted=False),
        )
        self._report.requeued += 1

    def _backoff(self, tries: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return retry_after_s
        ceiling = min(self.max_backoff_s, self.base_backoff_s * 2.0 ** (tries - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    # bodies, tokens and money ---------------------------------------------------------------

    def _prepare(self, request: PendingRequest) -> Callable[[str], Awaitable[Answer | CallFailed]]:
        """The call for one request at a tier: its body as planned, sent to its endpoint."""
        body = orjson.loads(request.body)
        if not isinstance(body, dict):
            raise ValueError("invalid request body: not a JSON object")
        if body.get("stream"):
            raise ValueError("streaming is not supported on the real-time lane")
        return lambda tier: self.api.call(
            body, request.endpoint, custom_id=request.id, timeout_s=self.timeout_s, tier=tier
        )

    def _worst_cost(self, request: PendingRequest) -> float:
        """The real-time lane's reservation: the planned worst case at the standard price."""
        return reservation(request, self.prices, batch=False)

    def _cost(
        self, request: PendingRequest, body: dict[str, Any], *, flex: bool
    ) -> tuple[int, int, float]:
        """An answer's tokens and price: the flex tier bills at batch prices."""
        return usage_cost(self.prices, request.model, body, batch=flex)


async def _relay(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


def _max_output(request: PendingRequest) -> int:
    return 0 if request.endpoint.endswith("/embeddings") else request.max_output_tokens
