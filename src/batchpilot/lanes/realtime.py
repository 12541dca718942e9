"""The real-time lane: requests sent one by one on the SDK's async client, within rate limits.

Same store, request ids, budget and retry policy as the batch lane. A request moves pending →
realtime before it waits for the throttle, and its outcome is committed the moment its answer
arrives, so a crash loses nothing already answered. 429, 408, 409, 5xx, timeouts and lost
connections are retried in place with exponential backoff and jitter (a `retry-after` wins, and
a 429 pauses the whole throttle); every try is one attempt under the RetryPolicy cap, recorded in
the store as it ends. Other 4xx fail the request for good with the server's message; 401 and 403
stop the lane with its requests back in pending, since every request would be refused alike.

A crash leaves the requests that were in flight in state `realtime`; `recover_inflight` (called
by the runner on start) moves them back to pending, counting the interrupted try as an attempt.
Such a request may be sent again: the real-time API offers no way to look up an earlier call.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx2
import openai
import orjson

from batchpilot.lanes.ratelimit import RateLimits, Throttle, TooLarge, retry_after
from batchpilot.pricing import PriceTable
from batchpilot.providers.base import AuthenticationFailed
from batchpilot.store import Outcome, PendingRequest, RequestState, SQLiteStore

if TYPE_CHECKING:  # at run time the import would be circular: batchpilot.run imports lanes
    from batchpilot.run.ingest import RetryPolicy

__all__ = ["CUSTOM_ID_HEADER", "LaneReport", "RealtimeLane", "recover_inflight"]

CUSTOM_ID_HEADER = "x-batchpilot-custom-id"
INTERRUPTED = "interrupted while in flight"
_DETAIL_LIMIT = 500
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx, as in batchpilot.run.ingest


@dataclass
class LaneReport:
    """What one `RealtimeLane.run` did. `requeued` requests went back to pending unsent."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    http_429: int = 0
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


class RealtimeLane:
    """Sends requests concurrently (at most `concurrency` in flight) within `limits`.

    Bodies go out as planned through the client's documented `post` (so the Azure client's
    deployment URLs and every endpoint of the Batch API work alike), with the client's own
    retries off: the lane retries, so that every try is counted and paced.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        store: SQLiteStore,
        run_id: str,
        *,
        limits: RateLimits,
        concurrency: int = 16,
        prices: PriceTable | None = None,
        retry: RetryPolicy,
        budget_usd: float | None = None,
        max_backoff_s: float = 60.0,
        base_backoff_s: float = 0.5,
        throttle: Throttle | None = None,
        check: Callable[[PendingRequest, dict[str, Any]], str | None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.store = store
        self.run_id = run_id
        self.concurrency = concurrency
        self.prices = prices
        self.retry = retry
        self.budget_usd = budget_usd
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.throttle = throttle or Throttle(limits)
        self.check = check
        self._secret = client.api_key if isinstance(client.api_key, str) else None
        self._rng = random.Random()
        self._inflight_usd = 0.0
        self._report = LaneReport()
        self._stop_waiter: asyncio.Future[Any] | None = None
        self._auth_error: str | None = None

    # the loop -------------------------------------------------------------------------------

    async def run(
        self, requests: Sequence[PendingRequest], stop: asyncio.Event | None = None
    ) -> LaneReport:
        """Send `requests` (all pending) and record each outcome as it arrives.

        Returns when every taken request has ended, when `stop` is set (requests still waiting
        for the throttle go back to pending; those on the wire finish), or when the budget cannot
        cover the next request's worst case even with nothing in flight (`budget_stopped`).
        Raises AuthenticationFailed, after the in-flight requests end, if the key is refused.
        """
        report = self._report = LaneReport()
        self._auth_error = None
        self._inflight_usd = 0.0
        self._stop_waiter = None if stop is None else asyncio.ensure_future(stop.wait())
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for request in requests:
                await slots.acquire()
                worst = self._worst_cost(request)
                while not self._halted() and not self._fits(worst) and tasks:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if self._halted():
                    slots.release()
                    break
                if not self._fits(worst):
                    slots.release()
                    report.budget_stopped = True
                    self.store.event(
                        self.run_id,
                        "budget",
                        f"real-time lane stopped: the budget of ${self.budget_usd:.6g} cannot "
                        f"cover the worst case (${worst:.6g}) of request {request.id}",
                    )
                    break
                self.store.move_requests(
                    self.run_id, [request.id], RequestState.PENDING, RequestState.REALTIME
                )
                self._inflight_usd += worst
                task = asyncio.create_task(self._serve(request, worst, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            if self._stop_waiter is not None:
                self._stop_waiter.cancel()
                self._stop_waiter = None
        report.stopped = stop is not None and stop.is_set()
        if self._auth_error is not None:
            self.store.event(self.run_id, "error", self._auth_error)
            raise AuthenticationFailed(self._auth_error)
        return report

    def _halted(self) -> bool:
        stopped = self._stop_waiter is not None and self._stop_waiter.done()
        return stopped or self._auth_error is not None

    def _fits(self, worst: float) -> bool:
        if self.budget_usd is None:
            return True
        spent, reserved = self.store.money(self.run_id)
        return spent + reserved + self._inflight_usd + worst <= self.budget_usd + 1e-12

    async def _serve(self, request: PendingRequest, worst: float, slots: asyncio.Semaphore) -> None:
        try:
            await self._attempts(request)
        finally:
            self._inflight_usd -= worst
            slots.release()

    async def _until(self, work: Coroutine[Any, Any, None]) -> bool:
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

    async def _attempts(self, request: PendingRequest) -> None:
        """Try `request` until it succeeds, fails for good, or the lane stops."""
        try:
            call = self._prepare(request)
        except ValueError as exc:
            self._finish(Outcome(request.id, RequestState.FAILED, error=str(exc), attempted=False))
            return
        tokens = request.input_tokens + _max_output(request)
        attempts, tries = request.attempts, 0
        on_wire = False
        try:
            while True:
                try:
                    if not await self._until(self.throttle.acquire(tokens)):
                        self._requeue(request)
                        return
                except TooLarge as exc:
                    self._finish(
                        Outcome(request.id, RequestState.FAILED, error=str(exc), attempted=False)
                    )
                    return
                on_wire = True
                failure = await self._send(request, call)
                on_wire = False
                if failure is None:
                    return
                if failure.headers is not None:
                    self.throttle.observe(failure.headers)
                if failure.status in (401, 403):
                    self._auth_error = failure.reason
                    self._requeue(request, failure.reason)
                    return
                state = self.retry.next_state(
                    replace(request, attempts=attempts), failure.retryable, True
                )
                if state != RequestState.PENDING:
                    self._finish(
                        Outcome(
                            request.id,
                            RequestState.FAILED,
                            None,
                            *failure.billed,
                            error=failure.reason,
                        )
                    )
                    return
                with self.store.tx():
                    self._report.spent_usd += failure.billed[2]
                    self.store.finish_realtime(
                        self.run_id,
                        Outcome(
                            request.id,
                            RequestState.PENDING,
                            None,
                            *failure.billed,
                            error=failure.reason,
                        ),
                    )
                    self.store.move_requests(
                        self.run_id, [request.id], RequestState.PENDING, RequestState.REALTIME
                    )
                attempts, tries = attempts + 1, tries + 1
                self._report.retried += 1
                delay = self._backoff(tries, failure.retry_after_s)
                if failure.status == 429:
                    self.throttle.pause(delay)
                elif not await self._until(asyncio.sleep(delay)):
                    self._requeue(request, failure.reason)
                    return
        except asyncio.CancelledError:
            if on_wire:
                self._finish(Outcome(request.id, RequestState.PENDING, error=INTERRUPTED))
            else:
                self._requeue(request)
            raise

    async def _send(
        self, request: PendingRequest, call: Callable[[], Awaitable[httpx2.Response]]
    ) -> _Failure | None:
        """One HTTP try; records a success and returns None, or returns what went wrong."""
        try:
            raw = await call()
        except openai.APIStatusError as exc:
            return self._status_failure(exc)
        except openai.APITimeoutError:
            return _Failure("timeout: no answer in time", retryable=True)
        except openai.APIConnectionError as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
            return _Failure(self._redact(f"connection error{cause}"), retryable=True)
        except openai.OpenAIError as exc:
            return _Failure(self._redact(f"{type(exc).__name__}: {exc}"), retryable=True)
        self.throttle.observe(raw.headers)
        try:
            body = orjson.loads(raw.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _Failure(f"http {raw.status_code}: the answer is not a JSON object", True)
        input_tokens, output_tokens, usd = self._cost(request, body)
        reason = self.check(request, body) if self.check is not None else None
        if reason is not None:
            return _Failure(reason, True, billed=(input_tokens, output_tokens, usd))
        self._finish(
            Outcome(request.id, RequestState.SUCCEEDED, body, input_tokens, output_tokens, usd)
        )
        return None

    def _status_failure(self, exc: openai.APIStatusError) -> _Failure:
        status = exc.status_code
        headers = exc.response.headers
        if status == 429:
            self._report.http_429 += 1
        body = exc.body
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            code = body.get("code") or body.get("type")
            text = f"{code}: {body['message']}" if code else str(body["message"])
        else:
            text = exc.message
        if len(text) > _DETAIL_LIMIT:
            text = text[:_DETAIL_LIMIT] + "…"
        return _Failure(
            self._redact(f"http {status}: {text}"),
            retryable=status in RETRYABLE_STATUS or status >= 500,
            status=status,
            retry_after_s=retry_after(headers),
            headers=headers,
        )

    def _finish(self, outcome: Outcome) -> None:
        self.store.finish_realtime(self.run_id, outcome)
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

    def _redact(self, message: str) -> str:
        if self._secret and len(self._secret) >= 4:
            return message.replace(self._secret, "***")
        return message

    # bodies, tokens and money ---------------------------------------------------------------

    def _prepare(self, request: PendingRequest) -> Callable[[], Awaitable[httpx2.Response]]:
        """The SDK call for one request: its body as planned, POSTed to its endpoint."""
        body = orjson.loads(request.body)
        if not isinstance(body, dict):
            raise ValueError("invalid request body: not a JSON object")
        if body.get("stream"):
            raise ValueError("streaming is not supported on the real-time lane")
        path = request.endpoint.removeprefix("/v1")
        headers = {CUSTOM_ID_HEADER: request.id}
        return lambda: self.client.post(
            path,
            cast_to=httpx2.Response,
            body=body,
            options={"headers": headers, "max_retries": 0},
        )

    def _worst_cost(self, request: PendingRequest) -> float:
        prices = self.prices
        if prices is None or not prices.has(request.model):
            return 0.0
        output = 0 if prices.price(request.model).output is None else _max_output(request)
        return prices.cost(
            request.model, input_tokens=request.input_tokens, output_tokens=output, batch=False
        )

    def _cost(self, request: PendingRequest, body: dict[str, Any]) -> tuple[int, int, float]:
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
        completion = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = min(prompt, int(details.get("cached_tokens", 0) or 0))
        if self.prices is None or not self.prices.has(request.model):
            return prompt, completion, 0.0
        usd = self.prices.cost(
            request.model,
            input_tokens=prompt,
            output_tokens=completion,
            cached_tokens=cached,
            batch=False,
        )
        return prompt, completion, usd


def _max_output(request: PendingRequest) -> int:
    return 0 if request.endpoint.endswith("/embeddings") else request.max_output_tokens


def recover_inflight(store: SQLiteStore, run_id: str) -> int:
    """Move every request left in `realtime` (by a crash) back to pending; returns how many.

    Each counts as an attempt, so that a request that keeps getting interrupted still runs into
    the retry cap. It may have reached the server: sending it again may run it twice.
    """
    with store.tx() as db:
        ids = [
            row[0]
            for row in db.execute(
                "SELECT id FROM requests WHERE run_id = ? AND state = ?",
                (run_id, RequestState.REALTIME.value),
            )
        ]
        for request_id in ids:
            store.finish_realtime(
                run_id, Outcome(request_id, RequestState.PENDING, error=INTERRUPTED)
            )
    return len(ids)
