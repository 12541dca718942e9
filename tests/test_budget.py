"""The worst case a budget reserves: every choice, the model's maximum output, images; computed
once at plan time, stored with each request, and reserved as stored by both lanes.

True spend is priced from the local server's ledger (the usage of every execution), so a test
proves what was really run stayed within the budget, whatever the store says.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.errors import BudgetExceeded, UserInputError
from batchpilot.lanes import LaneReport, RateLimits, RealtimeLane, recover_inflight
from batchpilot.plan import plan_job, plan_requests_file
from batchpilot.pricing import PriceTable
from batchpilot.providers.openai_realtime import OpenAIRealtime
from batchpilot.run import open_store, run_job
from batchpilot.run.ingest import RetryPolicy
from batchpilot.run.status import RunStatus
from batchpilot.run.store_sink import plan_into_store
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import JobSpec, job_from_dict
from batchpilot.store import RequestState, RunRecord, SQLiteStore, utc_now
from batchpilot.tokens import count_request

Factory = Callable[..., LocalServer]
FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}
MODEL = "gpt-4o-mini"


def make_job(tmp_path: Path, base_url: str = "http://127.0.0.1:9/v1", **changes: Any) -> JobSpec:
    data = tmp_path / "input.jsonl"
    if not data.exists():
        rows = (json.dumps({"id": f"r{i}", "text": f"tell a story about {i}"}) for i in range(12))
        data.write_text("\n".join(rows) + "\n")
    spec: dict[str, Any] = {
        "name": "money",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": MODEL,
        "input": {"path": "input.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "limits": {"requests_per_batch": 1, "queue_tokens": 10**6},
        **changes,
    }
    return job_from_dict({k: v for k, v in spec.items() if v is not None}, base_dir=tmp_path)


def true_spend(server: LocalServer, prices: PriceTable) -> float:
    """What the server really executed, priced: batch lines at the batch price."""
    total = 0.0
    for entry in server.admin.ledger():
        usage = entry["usage"]
        total += prices.cost(
            entry["model"],
            input_tokens=usage["input_tokens"],
            cached_tokens=usage["cached_tokens"],
            output_tokens=usage["output_tokens"],
            batch=entry["batch_id"] is not None,
        )
    return total


def planned_store(tmp_path: Path, job: JobSpec) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "state.sqlite3")
    record = RunRecord("run", job.name, "{}", "openai", job.endpoint, "planned", None, utc_now())
    plan_into_store(
        store, "run", lambda sink: plan_job(job, sink=sink), first=lambda: store.create_run(record)
    )
    return store


def test_the_ledger_records_the_usage_of_every_execution(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server.base_url, params={"max_tokens": 12})
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    ledger = server.admin.ledger()
    assert len(ledger) == 12
    for entry in ledger:
        assert set(entry["usage"]) == {"input_tokens", "cached_tokens", "output_tokens"}
        assert entry["usage"]["input_tokens"] > 0 and 0 < entry["usage"]["output_tokens"] <= 12
    assert true_spend(server, PriceTable.load()) == pytest.approx(result.status.spent_usd)


def test_every_choice_counts_and_the_true_spend_stays_in_the_budget(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    prices = PriceTable.load()
    params = {"n": 8, "max_tokens": 10}
    plan = plan_job(make_job(tmp_path, params=params))
    assert plan.worst_output_tokens == 12 * 8 * 10
    worst = plan.cost["batch_worst"]
    assert worst is not None
    budget = float(f"{worst / 12 * 3.5:.3g}")  # three requests' worst cases, not four
    job = make_job(tmp_path, server.base_url, params=params, budget={"max_usd": budget})
    with pytest.raises(BudgetExceeded):
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    executed = server.admin.ledger()
    assert executed and all(10 < e["usage"]["output_tokens"] <= 80 for e in executed)
    spent = true_spend(server, prices)
    assert 0 < spent <= budget
    store = open_store(tmp_path / "state")
    try:
        (run,) = store.runs()
        assert store.money(run.id)[0] == pytest.approx(spent)
    finally:
        store.close()


def test_a_known_model_without_max_tokens_is_bounded_by_its_maximum_output(
    tmp_path: Path,
) -> None:
    plan = plan_job(make_job(tmp_path))
    assert PriceTable.load().price(MODEL).max_output_tokens == 16_384
    assert plan.worst_output_tokens == 12 * 16_384
    # a reasoning model's maximum output includes its reasoning tokens; its cap is
    # max_completion_tokens, which counts them too
    reasoning = plan_job(make_job(tmp_path, model="o4-mini"))
    assert reasoning.worst_output_tokens == 12 * 100_000
    capped = plan_job(make_job(tmp_path, model="o4-mini", params={"max_completion_tokens": 900}))
    assert capped.worst_output_tokens == 12 * 900


def test_the_plan_and_the_run_reserve_the_same_worst_case(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        model="my-model",
        prices={"my-model": {"input": 1.0, "output": 2.0}},
        limits={"requests_per_batch": 1, "queue_tokens": 10**6, "context_window": 32_000},
    )
    from batchpilot.plan.worst import reservation

    plan = plan_job(job)
    store = planned_store(tmp_path, job)
    try:
        requests = store.pending("run", 100)
    finally:
        store.close()
    prices = PriceTable.load(overrides=job.prices)
    assert len(requests) == plan.requests == 12
    assert sum(r.worst_output_tokens or 0 for r in requests) == plan.worst_output_tokens
    for request in requests:
        assert request.worst_output_tokens == 32_000 - request.input_tokens
        assert request.max_output_tokens == request.worst_output_tokens
    for lane, key in ((True, "batch_worst"), (False, "realtime_worst")):
        reserved = sum(reservation(r, prices, batch=lane) for r in requests)
        assert reserved == pytest.approx(plan.cost[key])


def test_an_unbounded_model_is_refused_under_a_budget(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    changes: dict[str, Any] = {
        "model": "my-model",
        "prices": {"my-model": {"input": 1.0, "output": 2.0}},
    }
    free = plan_job(make_job(tmp_path, **changes))
    assert free.cost["batch_worst"] is None
    assert "unbounded_output" in {f.code for f in free.findings.kept if f.level == "warning"}

    job = make_job(tmp_path, server.base_url, budget={"max_usd": 1.0}, **changes)
    with pytest.raises(UserInputError) as refused:
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    message = str(refused.value)
    assert "my-model" in message and "max_tokens" in message
    assert "limits.max_output_tokens" in message
    store = open_store(tmp_path / "state")
    try:
        assert store.runs() == []
    finally:
        store.close()
    assert server.admin.ledger() == []

    bounded = plan_job(
        make_job(
            tmp_path,
            limits={"requests_per_batch": 1, "queue_tokens": 10**6, "max_output_tokens": 500},
            **changes,
        )
    )
    assert bounded.ok and bounded.worst_output_tokens == 12 * 500


def test_a_model_with_no_price_is_refused_under_a_budget(tmp_path: Path) -> None:
    job = make_job(tmp_path, model="my-model", budget={"max_usd": 1.0})
    with pytest.raises(UserInputError) as refused:
        run_job(job, state_dir=tmp_path / "state")
    assert "no price for model 'my-model'" in str(refused.value)


def test_an_embedding_job_runs_in_the_batch_lane_under_a_budget(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(
        tmp_path,
        server.base_url,
        model="text-embedding-3-small",
        endpoint="/v1/embeddings",
        prompt={"input": "{{ text }}"},
        budget={"max_usd": 0.01},
    )
    plan = plan_job(job)
    assert plan.worst_output_tokens == 0 and plan.cost["batch_worst"] == pytest.approx(
        plan.cost["batch"]
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished and result.status.requests["succeeded"] == 12
    assert {e["batch_id"] is not None for e in server.admin.ledger()} == {True}


def test_plan_of_a_requests_file_honours_each_lines_max_tokens(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    bodies = [
        {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 20}
        for i in range(3)
    ]
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(bodies)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    plan = plan_requests_file(path)
    prices = PriceTable.load()
    tokens = sum(count_request(body, "/v1/chat/completions").tokens for body in bodies)
    assert plan.worst_output_tokens == 60
    assert plan.cost["realtime_worst"] == pytest.approx(
        prices.cost(MODEL, input_tokens=tokens, output_tokens=60, batch=False)
    )


def test_an_image_of_unknown_size_counts_at_the_largest_size(tmp_path: Path) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}],
        "max_tokens": 10,
    }
    path = tmp_path / "requests.jsonl"
    line = {"custom_id": "c0", "method": "POST", "url": "/v1/chat/completions", "body": body}
    path.write_text(json.dumps(line) + "\n")
    plan = plan_requests_file(path)
    counted = count_request(body, "/v1/chat/completions").tokens
    assert plan.input_tokens == counted  # the estimate: a 1024 x 1024 image, 4 tiles
    largest = counted + 5667 * 4  # 768 x 2048: 8 tiles of 5667 tokens for gpt-4o-mini
    assert plan.cost["realtime_worst"] == pytest.approx(
        PriceTable.load().cost(MODEL, input_tokens=largest, output_tokens=10, batch=False)
    )


def test_a_request_interrupted_at_every_try_fails_at_max_attempts(tmp_path: Path) -> None:
    job = make_job(tmp_path, params={"max_tokens": 16})
    store = planned_store(tmp_path, job)
    prices = PriceTable.load()
    try:
        request = store.pending("run", 1)[0]
        assert request.worst_usd is not None
        for attempt in (1, 2):
            store.move_requests("run", [request.id], RequestState.PENDING, RequestState.REALTIME)
            count, charged = recover_inflight(store, "run", prices, RetryPolicy(2))
            assert (count, charged) == (1, pytest.approx(request.worst_usd))
            assert store.money("run")[0] == pytest.approx(attempt * request.worst_usd)
        counts = store.request_counts("run")
        assert counts["failed"] == 1 and counts["realtime"] == 0
        assert counts["pending"] == 11
    finally:
        store.close()


def test_a_try_that_timed_out_is_counted_at_its_worst_case(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(realtime_latency_s=1.0)
    job = make_job(tmp_path, params={"max_tokens": 16})
    store = planned_store(tmp_path, job)
    prices = PriceTable.load()
    request = store.pending("run", 1)[0]

    async def go() -> LaneReport:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", max_retries=0, timeout=0.2
        )
        try:
            lane = RealtimeLane(
                OpenAIRealtime(client),
                store,
                "run",
                limits=RateLimits(),
                prices=prices,
                retry=RetryPolicy(2),
                base_backoff_s=0.01,
            )
            return await lane.run([request])
        finally:
            await client.close()

    try:
        report = asyncio.run(go())
        assert report.failed == 1
        assert request.worst_usd is not None
        assert store.money("run")[0] == pytest.approx(2 * request.worst_usd)
        deadline = time.monotonic() + 30
        while len(server.admin.ledger()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(server.admin.ledger()) == 2  # both tries ran, though neither answered in time
        assert true_spend(server, prices) <= store.money("run")[0]
    finally:
        store.close()


def test_the_budget_holds_when_resumed_with_other_strategies_and_across_steps(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    prices = PriceTable.load()
    params = {"max_tokens": 16}
    plan = plan_job(make_job(tmp_path, params=params))
    assert plan.cost["realtime_worst"] is not None
    budget = float(f"{plan.cost['realtime_worst'] / 12 * 3:.3g}")  # six batch worst cases
    state = tmp_path / "state"
    for strategy in ("batch", "realtime", "hybrid", "batch"):
        job = make_job(
            tmp_path, server.base_url, params=params, budget={"max_usd": budget}, strategy=strategy
        )
        with pytest.raises(BudgetExceeded):
            run_job(job, state_dir=state, poll_interval=0.02)
        assert true_spend(server, prices) <= budget
    store = open_store(state)
    try:
        (run,) = store.runs()
        spent, reserved = store.money(run.id)
        assert store.request_counts(run.id)["pending"] > 0
    finally:
        store.close()
    assert reserved == 0 and spent == pytest.approx(true_spend(server, prices)) and spent <= budget

    steps = [
        {"name": "first", "prompt": {"user": "{{ text }}"}},
        {"name": "second", "prompt": {"user": "Again: {{ steps.first }}"}},
    ]
    before = true_spend(server, prices)
    job = make_job(
        tmp_path,
        server.base_url,
        params=params,
        budget={"max_usd": budget * 3},
        prompt=None,
        steps=steps,
    )
    with pytest.raises(BudgetExceeded):
        run_job(job, state_dir=tmp_path / "steps", poll_interval=0.02)
    assert true_spend(server, prices) - before <= budget * 3


@pytest.mark.parametrize("kind", ["garbled_line", "truncated_line"])
def test_a_batch_line_that_ran_but_cannot_be_read_is_counted_at_its_worst_case(
    tmp_path: Path, local_server_factory: Factory, kind: str
) -> None:
    faults = FaultPlan.model_validate({"seed": 3, "faults": [{"kind": kind, "rate": 0.4}]})
    server = local_server_factory(faults=faults, **FAST)
    job = make_job(
        tmp_path,
        server.base_url,
        params={"max_tokens": 16},
        budget={"max_usd": 0.01},
        limits={"requests_per_batch": 4, "queue_tokens": 10**6, "max_attempts": 5},
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    executions = len(server.admin.ledger())
    assert executions > 12  # some lines were garbled, and their requests ran again
    assert true_spend(server, PriceTable.load()) <= result.status.spent_usd <= 0.01


def test_a_price_raised_after_planning_raises_the_reservation(tmp_path: Path) -> None:
    from batchpilot.plan.worst import reservation

    job = make_job(tmp_path, params={"max_tokens": 16})
    store = planned_store(tmp_path, job)
    try:
        request = store.pending("run", 1)[0]
    finally:
        store.close()
    assert request.worst_usd is not None and request.batch_worst_usd is not None
    assert reservation(request, PriceTable.load(), batch=False) == request.worst_usd
    dearer = PriceTable.load(overrides={MODEL: {"input": 1.5, "output": 6.0}})
    assert reservation(request, dearer, batch=False) == pytest.approx(10 * request.worst_usd)
    assert reservation(request, dearer, batch=True) == pytest.approx(10 * request.batch_worst_usd)


def test_the_price_table_bounds_every_model_it_prices() -> None:
    prices = PriceTable.load()
    for name in prices.models:
        price = prices.price(name)
        assert price.context_window is not None, name
        if price.output is not None:  # embeddings have no output to bound
            assert price.max_output_tokens is not None, name
            assert price.max_output_tokens <= price.context_window, name


def test_the_budget_holds_when_a_run_is_cancelled_and_resumed(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(time_scale=2.0, validation_delay_s=2, cancel_delay_s=0)
    prices = PriceTable.load()
    params = {"max_tokens": 16}
    plan = plan_job(make_job(tmp_path, params=params))
    assert plan.cost["batch_worst"] is not None
    budget = float(f"{plan.cost['batch_worst'] / 12 * 8:.3g}")  # eight batch worst cases
    job = make_job(tmp_path, server.base_url, params=params, budget={"max_usd": budget})
    state = tmp_path / "state"
    seen: list[RunStatus] = []
    first = run_job(job, state_dir=state, poll_interval=0.02, detach=True, on_progress=seen.append)
    assert first.status.batches.get("submitted", 0) > 0
    cancelled = CliRunner().invoke(cli, ["cancel", "--state", str(state)])
    assert cancelled.exit_code == 0, cancelled.output
    with pytest.raises(BudgetExceeded):
        run_job(job, state_dir=state, poll_interval=0.02, on_progress=seen.append)
    assert all(s.spent_usd + s.reserved_usd <= budget + 1e-12 for s in seen)
    assert true_spend(server, prices) <= budget


def test_the_budget_holds_across_target_waves(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    params = {"max_tokens": 16}
    plan = plan_job(make_job(tmp_path, params=params))
    assert plan.cost["batch_worst"] is not None
    budget = float(f"{plan.cost['batch_worst'] / 12 * 6:.3g}")  # six batch worst cases
    job = make_job(
        tmp_path,
        server.base_url,
        params=params,
        budget={"max_usd": budget},
        target={"valid": 11, "first_rows": 3},
    )
    with pytest.raises(BudgetExceeded):
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert len(server.admin.ledger()) > 3  # more than the first wave ran
    assert true_spend(server, PriceTable.load()) <= budget
