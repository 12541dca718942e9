"""The real-time lane: the throttle on a fake clock, and the lane against the local server."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import openai
import orjson
import pytest

from batchpilot.lanes import (
    LaneReport,
    RateLimits,
    RealtimeLane,
    Throttle,
    TooLarge,
    parse_duration,
    recover_inflight,
    retry_after,
)
from batchpilot.plan.ids import canonical_body, request_id
from batchpilot.plan.worst import bounds_for, worst_output_tokens
from batchpilot.pricing import PriceTable
from batchpilot.providers.base import Answer, AuthenticationFailed, CallFailed
from batchpilot.providers.openai_realtime import OpenAIRealtime
from batchpilot.run.ingest import RetryPolicy
from batchpilot.server import FaultPlan, LocalServer, RateLimit
from batchpilot.store import Outcome, RequestState, RunRecord, SQLiteStore, utc_now
from batchpilot.tokens import count_request

from helpers import sql

T = TypeVar("T")
MODEL = "gpt-4o-mini"
EP = "/v1/chat/completions"
RUN = "run-rt"
ServerFactory = Callable[..., LocalServer]


# the throttle, on a fake clock ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def throttle(**limits: int) -> tuple[Throttle, FakeClock]:
    clock = FakeClock()
    return Throttle(RateLimits(**limits), clock=clock, sleep=clock.sleep), clock


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_rpm_paces_exactly_after_the_burst() -> None:
    gate, clock = throttle(rpm=60)

    async def go() -> list[float]:
        times = []
        for _ in range(63):
            await gate.acquire(10)
            times.append(clock.now)
        return times

    times = run(go())
    assert times[:60] == [0.0] * 60
    assert times[60:] == pytest.approx([1.0, 2.0, 3.0], abs=1e-9)


def test_concurrent_waiters_are_served_in_order() -> None:
    gate, clock = throttle(rpm=60)

    async def go() -> list[tuple[int, float]]:
        order: list[tuple[int, float]] = []

        async def one(index: int) -> None:
            await gate.acquire(1)
            order.append((index, clock.now))

        await asyncio.gather(*(one(i) for i in range(62)))
        return order

    order = run(go())
    assert [index for index, _ in order] == list(range(62))
    assert [at for _, at in order[-2:]] == pytest.approx([1.0, 2.0], abs=1e-9)


def test_try_acquire_takes_only_what_is_there_now() -> None:
    gate, clock = throttle(rpm=60, tpm=1000)
    assert gate.try_acquire(600)
    assert not gate.try_acquire(600)  # 400 tokens left: nothing taken
    assert gate.try_acquire(400)
    assert not gate.try_acquire(1)
    clock.now = 60.0
    assert gate.try_acquire(1000)
    with pytest.raises(TooLarge):
        gate.try_acquire(1001)

    clock.now = 120.0
    gate.pause(30.0)
    assert not gate.try_acquire(1)  # a 429 paused every request

    async def waiting_first() -> bool:
        waiter = asyncio.ensure_future(gate.acquire(1))
        await asyncio.sleep(0)  # the waiter holds the throttle's queue
        jumped = gate.try_acquire(1)
        waiter.cancel()
        return jumped

    assert not run(waiting_first())


def test_tpm_waits_for_enough_tokens() -> None:
    gate, clock = throttle(tpm=1000)

    async def go() -> None:
        await gate.acquire(600)
        assert clock.now == 0.0
        await gate.acquire(600)  # 400 left; 200 more take 200 / (1000 / 60) s

    run(go())
    assert clock.now == pytest.approx(12.0)


def test_rpd_caps_the_day() -> None:
    gate, clock = throttle(rpd=2, rpm=1000)

    async def go() -> None:
        for _ in range(3):
            await gate.acquire(1)

    run(go())
    assert clock.now == pytest.approx(43_200.0)


def test_a_request_over_the_tpm_capacity_is_too_large() -> None:
    gate, _ = throttle(tpm=100)
    with pytest.raises(TooLarge, match="request too large for the TPM limit") as caught:
        run(gate.acquire(101))
    assert isinstance(caught.value, ValueError)
    run(gate.acquire(100))


def test_a_lowered_capacity_ends_a_wait_that_can_never_succeed() -> None:
    gate, _ = throttle(tpm=100)

    async def go() -> None:
        await gate.acquire(60)
        waiter = asyncio.ensure_future(gate.acquire(90))
        await asyncio.sleep(0)
        gate.observe({"x-ratelimit-limit-tokens": "80"})
        with pytest.raises(TooLarge):
            await waiter

    run(go())
    assert gate.limits.tpm == 80


def test_headers_lower_limits_and_levels() -> None:
    gate, clock = throttle(rpm=600, tpm=10_000)
    gate.observe(
        {
            "X-RateLimit-Limit-Requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-limit-tokens": "20000",  # higher than configured: ignored
            "x-ratelimit-remaining-tokens": "5000",
        }
    )
    assert gate.limits == RateLimits(rpm=60, tpm=10_000)

    async def go() -> None:
        await gate.acquire(100)

    run(go())
    assert clock.now == pytest.approx(1.0)
    assert gate.tokens_per_minute is not None
    assert gate.tokens_per_minute.level == pytest.approx(5000 + 1.0 * 10_000 / 60 - 100)
    gate.observe({"x-ratelimit-remaining-requests": "30"})  # never raises the level
    assert gate.requests_per_minute is not None
    assert gate.requests_per_minute.level == pytest.approx(0.0)


def test_headers_create_an_unconfigured_bucket_and_reset_stands_in_for_remaining() -> None:
    gate, _ = throttle()
    gate.observe({"x-ratelimit-limit-requests": "60", "x-ratelimit-reset-requests": "6s"})
    assert gate.limits == RateLimits(rpm=60)
    assert gate.requests_per_minute is not None
    assert gate.requests_per_minute.level == pytest.approx(54.0)


def test_pause_holds_every_acquisition_and_never_shortens() -> None:
    gate, clock = throttle(rpm=1000)
    gate.pause(2.5)
    gate.pause(1.0)

    async def go() -> None:
        await gate.acquire(1)

    run(go())
    assert clock.now == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1.5s", 1.5), ("1h2m3s", 3723.0), ("0.5", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "s", "-1", "1s2"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_retry_after_prefers_milliseconds_and_reads_dates() -> None:
    assert retry_after({"Retry-After-Ms": "250", "retry-after": "3"}) == pytest.approx(0.25)
    assert retry_after({"retry-after": "1.5"}) == pytest.approx(1.5)
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after({"retry-after": later}) == pytest.approx(30, abs=2)
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_limits_from_the_tier_table() -> None:
    assert RateLimits.from_tier(MODEL, 1) == RateLimits(rpm=500, tpm=200_000, rpd=10_000)
    assert RateLimits.from_tier("no-such-model") == RateLimits()


# the lane, against the local server -------------------------------------------------------


def chat(index: int, **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Question {index}?"}]}
    return {**body, "max_tokens": 30, **extra}


def make_store(
    tmp_path: Path, bodies: list[dict[str, Any]], endpoint: str = EP
) -> tuple[SQLiteStore, list[str]]:
    store = SQLiteStore(tmp_path / "runs.db")
    store.create_run(RunRecord(RUN, "job", "{}", "openai", endpoint, "running", None, utc_now()))
    ids = []
    with store.tx():
        for index, body in enumerate(bodies):
            canonical = canonical_body(body)
            rid = request_id(endpoint, canonical)
            tokens = count_request(body, endpoint).tokens
            store.add_row(RUN, index, f"row-{index}", "input.jsonl", rid, None)
            store.add_request(
                RUN,
                rid,
                hashlib.sha256(canonical).hexdigest(),
                endpoint,
                str(body["model"]),
                canonical,
                tokens,
                worst_output_tokens(
                    endpoint, body, tokens, bounds_for(str(body["model"]), PriceTable.load())
                )
                or 0,
                index,
            )
            ids.append(rid)
    return store, ids


def drive(
    server: LocalServer,
    store: SQLiteStore,
    stop_after: float | None = None,
    api_key: str = "test",
    azure: bool = False,
    **options: Any,
) -> LaneReport:
    async def go() -> LaneReport:
        client = (
            openai.AsyncAzureOpenAI(
                azure_endpoint=server.base_url.removesuffix("/v1"),
                api_key=api_key,
                api_version="2024-10-21",
                max_retries=0,
            )
            if azure
            else openai.AsyncOpenAI(base_url=server.base_url, api_key=api_key, max_retries=0)
        )
        try:
            options.setdefault("limits", RateLimits())
            options.setdefault("retry", RetryPolicy())
            lane = RealtimeLane(OpenAIRealtime(client), store, RUN, **options)
            stop = asyncio.Event()
            if stop_after is not None:
                asyncio.get_running_loop().call_later(stop_after, stop.set)
            return await lane.run(store.pending(RUN, 10_000), stop)
        finally:
            await client.close()

    return asyncio.run(go())


def states(store: SQLiteStore) -> dict[str, tuple[str, int, str | None]]:
    rows = sql(store.path, "SELECT id, state, attempts, error FROM requests WHERE run_id = ?", RUN)
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def ledger_ids(server: LocalServer) -> Counter[str]:
    return Counter(str(entry["custom_id"]) for entry in server.admin.ledger())


def test_pacing_keeps_the_server_from_answering_429(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory(
        rate_limits={MODEL: RateLimit(rpm=60)}, time_scale=60
    )  # one virtual minute is one real second
    store, ids = make_store(tmp_path, [chat(i) for i in range(30)])
    report = drive(server, store, limits=RateLimits(rpm=60))
    assert (report.succeeded, report.failed, report.http_429, report.retried) == (30, 0, 0, 0)
    assert ledger_ids(server) == Counter(ids)


def test_pacing_past_the_burst_sends_no_429(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    scale = 60.0
    server = local_server_factory(rate_limits={MODEL: RateLimit(rpm=60)}, time_scale=scale)
    store, ids = make_store(tmp_path, [chat(i) for i in range(100)])

    async def scaled_sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / scale)

    # The lane's clock runs in the server's virtual time, a little under the server's limit.
    gate = Throttle(RateLimits(rpm=54), clock=lambda: time.monotonic() * scale, sleep=scaled_sleep)
    started = time.monotonic()
    report = drive(server, store, throttle=gate, limits=RateLimits(rpm=54))
    elapsed = time.monotonic() - started
    assert (report.succeeded, report.http_429) == (100, 0)
    assert elapsed >= 0.8  # 54 at once, then 46 at 54 per second
    assert ledger_ids(server) == Counter(ids)
    assert {entry["status_code"] for entry in server.admin.ledger()} == {200}


def test_injected_429s_are_retried_and_each_request_runs_once(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    faults = FaultPlan.model_validate(
        {
            "seed": 3,
            "faults": [
                {
                    "kind": "http_error",
                    "route": "POST /v1/chat/completions",
                    "status": 429,
                    "rate": 0.3,
                    "retry_after_s": 0.05,
                }
            ],
        }
    )
    server = local_server_factory(faults=faults)
    store, ids = make_store(tmp_path, [chat(i) for i in range(30)])
    report = drive(server, store, retry=RetryPolicy(max_attempts=20), concurrency=8)
    assert (report.succeeded, report.failed) == (30, 0)
    assert report.http_429 == report.retried > 0
    assert ledger_ids(server) == Counter(ids)
    rows = states(store)
    assert {state for state, _, _ in rows.values()} == {"succeeded"}
    assert sum(attempts for _, attempts, _ in rows.values()) == 30 + report.retried


def test_server_errors_retry_up_to_the_cap(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    faults = FaultPlan.model_validate(
        {"faults": [{"kind": "http_error", "route": "POST /v1/chat/completions", "status": 503}]}
    )
    server = local_server_factory(faults=faults)
    store, _ = make_store(tmp_path, [chat(i) for i in range(3)])
    report = drive(server, store, retry=RetryPolicy(max_attempts=3), base_backoff_s=0.01)
    assert (report.succeeded, report.failed, report.retried) == (0, 3, 6)
    for state, attempts, error in states(store).values():
        assert (state, attempts) == ("failed", 3)
        assert error is not None and error.startswith("http 503: ")


def test_a_bad_request_fails_alone_with_its_reason(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    bodies = [chat(i) for i in range(5)] + [{"model": MODEL, "messages": [], "max_tokens": 5}]
    store, ids = make_store(tmp_path, bodies)
    report = drive(server, store)
    assert (report.succeeded, report.failed, report.retried) == (5, 1, 0)
    state, attempts, error = states(store)[ids[-1]]
    assert (state, attempts) == ("failed", 1)
    assert error is not None and error.startswith("http 400: empty_array: Invalid 'messages'")


def test_a_request_over_the_tpm_limit_fails_without_being_sent(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    store, ids = make_store(tmp_path, [chat(0), chat(1, max_tokens=5000)])
    report = drive(server, store, limits=RateLimits(tpm=1000))
    assert (report.succeeded, report.failed) == (1, 1)
    state, _, error = states(store)[ids[1]]
    assert state == "failed" and error is not None
    assert error.startswith("request too large for the TPM limit")
    assert ledger_ids(server) == Counter(ids[:1])


def test_the_budget_stops_the_lane_before_it_is_passed(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    store, _ = make_store(tmp_path, [chat(i) for i in range(20)])
    prices = PriceTable.load()
    first = store.pending(RUN, 1)[0]
    worst = prices.cost(
        MODEL, input_tokens=first.input_tokens, output_tokens=first.max_output_tokens, batch=False
    )
    budget = worst * 6.5
    report = drive(server, store, prices=prices, budget_usd=budget, concurrency=4)
    assert report.budget_stopped
    spent, reserved = store.money(RUN)
    assert reserved == 0.0
    assert spent == pytest.approx(report.spent_usd)
    assert 0 < spent <= budget
    counts = store.request_counts(RUN)
    assert counts["succeeded"] == report.succeeded >= 6
    assert counts["pending"] == 20 - report.succeeded
    assert counts["realtime"] == 0


def test_results_stream_into_the_store_at_real_time_prices(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    store, ids = make_store(tmp_path, [chat(i) for i in range(12)])
    prices = PriceTable.load()
    report = drive(server, store, prices=prices)
    rows = sql(
        store.path,
        "SELECT request_id, lane, input_tokens, output_tokens, cost_usd, unpack(response_json) "
        "FROM results WHERE run_id = ?",
        RUN,
    )
    assert sorted(row[0] for row in rows) == sorted(ids)
    assert {row[1] for row in rows} == {"realtime"}
    expected = [
        prices.cost(MODEL, input_tokens=row[2], output_tokens=row[3], batch=False) for row in rows
    ]
    assert [row[4] for row in rows] == pytest.approx(expected)
    assert all(row[2] > 0 and row[3] > 0 for row in rows)
    assert all('"chat.completion"' in row[5] for row in rows)
    spent, _ = store.money(RUN)
    assert spent == pytest.approx(sum(expected)) == pytest.approx(report.spent_usd)


def test_embeddings_and_the_azure_client_go_through_the_same_lane(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    inputs = [{"model": "text-embedding-3-small", "input": f"text {i}"} for i in range(3)]
    store, ids = make_store(tmp_path / "embeddings", inputs, "/v1/embeddings")
    assert drive(server, store).succeeded == 3
    answers = [row[0] for row in sql(store.path, "SELECT unpack(response_json) FROM results")]
    vectors = [orjson.loads(text)["data"][0]["embedding"] for text in answers]
    assert all(isinstance(v, list) and isinstance(v[0], float) for v in vectors)
    store, azure_ids = make_store(tmp_path / "azure", [chat(i) for i in range(3)])
    assert drive(server, store, azure=True).succeeded == 3
    assert ledger_ids(server) == Counter(ids + azure_ids)


def test_stop_sends_nothing_new_and_leaves_the_rest_pending(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    store, _ = make_store(tmp_path, [chat(i) for i in range(10)])
    report = drive(server, store, stop_after=0.5, limits=RateLimits(rpm=3), concurrency=4)
    assert report.stopped
    assert report.succeeded == 3
    counts = store.request_counts(RUN)
    assert (counts["succeeded"], counts["pending"], counts["realtime"]) == (3, 7, 0)
    assert all(attempts == 0 for state, attempts, _ in states(store).values() if state == "pending")


def test_a_refused_key_stops_the_lane_with_every_request_pending(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory(api_key="the-right-key")
    store, _ = make_store(tmp_path, [chat(i) for i in range(5)])
    with pytest.raises(AuthenticationFailed, match="http 401"):
        drive(server, store, api_key="a-wrong-key-1234")
    assert store.request_counts(RUN)["pending"] == 5
    assert all(attempts == 0 for _, attempts, _ in states(store).values())


def test_recover_inflight_counts_an_attempt_at_its_worst_case(tmp_path: Path) -> None:
    store, ids = make_store(tmp_path, [chat(i) for i in range(4)])
    store.move_requests(RUN, ids[:3], RequestState.PENDING, RequestState.REALTIME)
    prices = PriceTable.load()
    worst = sum(
        prices.cost(
            MODEL, input_tokens=r.input_tokens, output_tokens=r.max_output_tokens, batch=False
        )
        for r in store.in_flight(RUN)
    )
    count, charged = recover_inflight(store, RUN, prices, RetryPolicy(3))
    assert count == 3 and charged == pytest.approx(worst) and worst > 0
    rows = states(store)
    for rid in ids[:3]:
        state, attempts, error = rows[rid]
        assert (state, attempts) == ("pending", 1)
        assert error is not None and error.startswith("interrupted while in flight")
    assert rows[ids[3]] == ("pending", 0, None)
    assert store.money(RUN) == (pytest.approx(worst), 0.0)
    assert recover_inflight(store, RUN, prices, RetryPolicy(3)) == (0, 0.0)


def transactions_while(store: SQLiteStore, work: Callable[[], T]) -> tuple[T, list[str]]:
    """`work()`'s result and the transactions SQLite committed meanwhile on the store's
    connection, each as its statements joined by newlines."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    try:
        result = work()
    finally:
        store._db.set_trace_callback(None)
    committed, current = [], []
    for statement in seen:
        if statement.strip().upper() == "COMMIT":
            committed.append("\n".join(current))
            current = []
        elif not statement.strip().upper().startswith("BEGIN"):
            current.append(statement)
    return result, committed


def recording(transactions: list[str]) -> list[str]:
    """The transactions that recorded outcomes (an attempt each)."""
    return [tx for tx in transactions if "INSERT INTO attempts" in tx]


def claiming(transactions: list[str]) -> list[str]:
    """The transactions that moved requests pending → realtime."""
    return [tx for tx in transactions if "SET state = 'realtime'" in tx]


class AnswersTogether:
    """A real-time API that holds calls until `group` of them are waiting (or the `total`-th
    call has come), then answers those together, in the same turn of the event loop."""

    def __init__(self, group: int, total: int | None = None) -> None:
        self.group = group
        self.total = total if total is not None else group
        self.calls = 0
        self._held: list[asyncio.Future[None]] = []

    async def call(self, body: dict[str, Any], endpoint: str, **_: Any) -> Answer | CallFailed:
        self.calls += 1
        held = asyncio.get_running_loop().create_future()
        self._held.append(held)
        if len(self._held) >= self.group or self.calls >= self.total:
            for waiting in self._held:
                waiting.set_result(None)
            self._held = []
        await held
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        message = {"role": "assistant", "content": "ok"}
        return Answer(
            {"object": "chat.completion", "choices": [{"message": message}], "usage": usage}
        )

    async def aclose(self) -> None:
        return None


def test_answers_that_arrive_together_are_committed_in_one_transaction(tmp_path: Path) -> None:
    store, ids = make_store(tmp_path, [chat(i) for i in range(6)])
    lane = RealtimeLane(
        AnswersTogether(len(ids)),
        store,
        RUN,
        limits=RateLimits(),
        retry=RetryPolicy(),
        concurrency=4 * len(ids),
    )
    report, transactions = transactions_while(
        store, lambda: run(lane.run(store.pending(RUN, len(ids))))
    )
    assert report.succeeded == len(ids)
    assert len(recording(transactions)) == 1
    assert {rid: state for rid, (state, _, _) in states(store).items()} == dict.fromkeys(
        ids, "succeeded"
    )


def test_requests_that_can_all_go_now_are_claimed_in_one_transaction(tmp_path: Path) -> None:
    store, ids = make_store(tmp_path, [chat(i) for i in range(6)])
    lane = RealtimeLane(
        AnswersTogether(4, len(ids)),
        store,
        RUN,
        limits=RateLimits(rpm=1000),
        retry=RetryPolicy(),
        concurrency=4,
    )
    report, transactions = transactions_while(
        store, lambda: run(lane.run(store.pending(RUN, len(ids))))
    )
    # four slots free at the start: four claims together; the last two wait for slots, which
    # come back together when the four answers are committed together
    assert report.succeeded == len(ids)
    claims = claiming(transactions)
    assert [tx.count("SET state = 'realtime'") for tx in claims] == [4, 2]


def test_an_answer_waiting_for_its_commit_is_committed_when_its_task_is_cancelled(
    tmp_path: Path,
) -> None:
    store, ids = make_store(tmp_path, [chat(0)])
    assert store.claim_realtime(RUN, ids[0])
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="test", max_retries=0)
    lane = RealtimeLane(
        OpenAIRealtime(client), store, RUN, limits=RateLimits(), retry=RetryPolicy()
    )
    lane._live = 2  # another request is still on the wire: this answer waits for the window
    body = {"object": "chat.completion", "choices": [{"message": {"content": "ok"}}]}

    async def cancelled_before_the_commit() -> None:
        answer = Outcome(ids[0], RequestState.SUCCEEDED, body, 10, 2, 0.001)
        task = asyncio.create_task(lane._record(answer))
        await asyncio.sleep(0)  # the task queues its answer and waits for the window
        assert states(store)[ids[0]][0] == "realtime"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancelled_before_the_commit())
    assert states(store)[ids[0]][0] == "succeeded"
