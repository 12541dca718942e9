"""The flex tier: OpenAI's `service_tier: "flex"` (batch prices on the real-time API, slower,
sometimes refused with 429 `resource_unavailable`), in the local server, the real-time lane and
the `flex` strategy, through the official SDK over HTTP."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from batchpilot.errors import UserInputError
from batchpilot.pricing import PriceTable
from batchpilot.run import open_store, run_job
from batchpilot.run.ingest import RetryPolicy
from batchpilot.server import LocalServer, RateLimit
from batchpilot.spec import job_from_dict
from test_realtime_lane import MODEL, RUN, chat, drive, ledger_ids, make_store

from helpers import client_for, sql

ServerFactory = Callable[..., LocalServer]


def results(store: Any) -> list[tuple[Any, ...]]:
    return sql(
        store.path,
        "SELECT request_id, lane, input_tokens, output_tokens, cost_usd, unpack(response_json) "
        "FROM results WHERE run_id = ?",
        RUN,
    )


# the server's flex tier -----------------------------------------------------------------------


def test_the_server_answers_flex_slower_and_echoes_the_tier(
    local_server_factory: ServerFactory,
) -> None:
    server = local_server_factory(flex_latency_s=0.3)
    client = client_for(server)
    messages: Any = [{"role": "user", "content": "hello"}]
    standard = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
    started = time.monotonic()
    flex = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=5, service_tier="flex"
    )
    slow = time.monotonic() - started
    assert (flex.service_tier, standard.service_tier) == ("flex", "default")
    assert slow >= 0.3  # the standard tier has no latency configured
    answer = client.responses.create(model=MODEL, input="hello", service_tier="flex")
    assert answer.service_tier == "flex"
    tiers = [entry["service_tier"] for entry in server.admin.ledger()]
    assert tiers == [None, "flex", "flex"]


def test_the_server_refuses_flex_with_resource_unavailable_and_runs_nothing(
    local_server_factory: ServerFactory,
) -> None:
    server = local_server_factory(flex_refusal_rate=1.0, rate_limits={MODEL: RateLimit(rpm=1000)})
    client = client_for(server, max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=messages, service_tier="flex")
    assert refused.value.code == "resource_unavailable"
    assert server.admin.ledger() == []
    # the standard tier is not refused, and the refusal used none of the rate limits
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    assert raw.headers["x-ratelimit-remaining-requests"] == "999"


# the lane at the flex tier --------------------------------------------------------------------


def test_the_flex_lane_pays_batch_prices_and_records_its_lane(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    store, ids = make_store(tmp_path, [chat(i) for i in range(8)])
    prices = PriceTable.load()
    report = drive(server, store, prices=prices, tier="flex")
    assert (report.succeeded, report.flex_refused) == (8, 0)
    rows = results(store)
    assert sorted(row[0] for row in rows) == sorted(ids)
    assert {row[1] for row in rows} == {"flex"}
    assert {json.loads(row[5])["service_tier"] for row in rows} == {"flex"}
    expected = [prices.cost(MODEL, input_tokens=r[2], output_tokens=r[3], batch=True) for r in rows]
    assert [row[4] for row in rows] == pytest.approx(expected)
    # the ledger's usage at batch rates is what the store says was spent
    ledger = server.admin.ledger()
    assert {entry["service_tier"] for entry in ledger} == {"flex"}
    billed = sum(
        prices.cost(
            MODEL,
            input_tokens=e["usage"]["input_tokens"],
            output_tokens=e["usage"]["output_tokens"],
            batch=True,
        )
        for e in ledger
    )
    spent, _ = store.money(RUN)
    assert spent == pytest.approx(billed) == pytest.approx(sum(expected))
    lanes = sql(store.path, "SELECT DISTINCT lane FROM attempts WHERE run_id = ?", RUN)
    assert lanes == [("flex",)]


def test_flex_refusals_are_retried_and_each_request_runs_once(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory(flex_refusal_rate=0.4)
    store, ids = make_store(tmp_path, [chat(i) for i in range(20)])
    report = drive(
        server,
        store,
        tier="flex",
        retry=RetryPolicy(max_attempts=30),
        base_backoff_s=0.01,
        max_backoff_s=0.05,
        concurrency=8,
    )
    assert (report.succeeded, report.failed, report.flex_fallbacks) == (20, 0, 0)
    assert report.flex_refused == report.retried > 0
    assert ledger_ids(server) == Counter(ids)
    refusals = sql(
        store.path,
        "SELECT lane, error FROM attempts WHERE run_id = ? AND outcome = 'pending'",
        RUN,
    )
    assert len(refusals) == report.flex_refused
    assert {lane for lane, _ in refusals} == {"flex"}
    assert all("resource_unavailable" in error for _, error in refusals)


def test_a_request_the_flex_tier_keeps_refusing_goes_standard_for_its_last_try(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory(flex_refusal_rate=1.0)
    store, _ = make_store(tmp_path, [chat(i) for i in range(4)])
    prices = PriceTable.load()
    report = drive(
        server, store, prices=prices, tier="flex", retry=RetryPolicy(3), base_backoff_s=0.01
    )
    assert (report.succeeded, report.failed) == (4, 0)
    assert (report.flex_refused, report.flex_fallbacks) == (8, 4)
    rows = results(store)
    assert {row[1] for row in rows} == {"realtime"}
    expected = [
        prices.cost(MODEL, input_tokens=r[2], output_tokens=r[3], batch=False) for r in rows
    ]
    assert [row[4] for row in rows] == pytest.approx(expected)
    assert [entry["service_tier"] for entry in server.admin.ledger()] == [None] * 4


def test_near_the_deadline_a_refused_request_goes_standard_at_once(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory(flex_refusal_rate=1.0)
    store, _ = make_store(tmp_path, [chat(i) for i in range(3)])
    deadline = datetime.now(UTC) + timedelta(seconds=3600)
    report = drive(
        server,
        store,
        tier="flex",
        retry=RetryPolicy(10),
        deadline=deadline,
        flex_fallback_s=3540,  # a minute to spare for the first try
        base_backoff_s=120.0,  # a backoff of one to two minutes
        max_backoff_s=120.0,
    )
    # one refusal each: its backoff would end within the fallback margin, so the next try is
    # standard and is sent without waiting it out
    assert (report.succeeded, report.flex_refused, report.flex_fallbacks) == (3, 3, 3)
    within = datetime.now(UTC) + timedelta(seconds=60)
    report = drive(
        server,
        make_store(tmp_path / "second", [chat(i) for i in range(3)])[0],
        tier="flex",
        deadline=within,
        flex_fallback_s=120,
    )
    assert (report.succeeded, report.flex_refused) == (3, 0)


# the flex strategy ----------------------------------------------------------------------------


def flex_job(tmp_path: Path, server: LocalServer, rows: int, **changes: Any) -> Any:
    data = [{"id": f"r{i:03d}", "text": f"sentence number {i}"} for i in range(rows)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    spec: dict[str, Any] = {
        "name": "flex",
        "provider": {"kind": "openai", "base_url": server.base_url},
        "model": MODEL,
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 12},
        "limits": {"requests_per_batch": 10, "queue_tokens": 10**6},
        "output": {"path": "out.jsonl"},
        "strategy": "flex",
    }
    spec.update(changes)
    return job_from_dict(spec, base_dir=tmp_path)


def test_the_flex_strategy_runs_every_request_at_the_flex_tier(
    tmp_path: Path, local_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-flex-test")
    server = local_server_factory(flex_refusal_rate=0.3, time_scale=60)
    job = flex_job(tmp_path, server, 12, limits={"max_attempts": 20})
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished and result.status.requests["succeeded"] == 12
    ledger = server.admin.ledger()
    assert {entry["service_tier"] for entry in ledger} == {"flex"}
    assert not any(entry["batch_id"] for entry in ledger)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {row["lane"] for row in rows} == {"flex"}
    prices = PriceTable.load()
    billed = sum(
        prices.cost(
            MODEL,
            input_tokens=e["usage"]["input_tokens"],
            output_tokens=e["usage"]["output_tokens"],
            batch=True,
        )
        for e in ledger
    )
    store = open_store(tmp_path / "state")
    try:
        spent, _ = store.money(result.run_id)
    finally:
        store.close()
    assert spent == pytest.approx(billed)


def test_the_flex_strategy_needs_a_provider_with_the_flex_tier(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory()
    job = flex_job(
        tmp_path, server, 2, provider={"kind": "compatible", "base_url": server.base_url}
    )
    with pytest.raises(UserInputError, match="has no flex tier"):
        run_job(job, state_dir=tmp_path / "state")
    assert server.admin.ledger() == []


def test_the_hybrid_sends_its_real_time_share_at_the_flex_tier(
    tmp_path: Path, local_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-flex-test")
    server = local_server_factory(
        time_scale=50,
        rate_limits={MODEL: RateLimit(rpm=300)},
        validation_delay_s=1,
        finalizing_delay_s=1,
    )
    job = flex_job(
        tmp_path,
        server,
        60,
        strategy="hybrid",
        realtime={"rpm": 300, "flex": True},
        estimate={"batch_turnaround_hours": 0.002, "flex_latency_seconds": 0},
        limits={"requests_per_batch": 10, "queue_tokens": 200},
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    ledger = server.admin.ledger()
    batch = Counter(e["custom_id"] for e in ledger if e["batch_id"])
    realtime = Counter(e["custom_id"] for e in ledger if not e["batch_id"])
    assert batch and realtime and not set(batch) & set(realtime)
    assert {e["service_tier"] for e in ledger if not e["batch_id"]} == {"flex"}
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    lanes = {json.loads(line)["lane"] for line in lines}
    assert lanes == {"batch", "flex"}


def test_the_plan_shows_flex_where_the_provider_and_the_model_have_it(tmp_path: Path) -> None:
    from batchpilot.plan import plan_job

    url = "http://127.0.0.1:9/v1"
    rows = "".join(json.dumps({"id": i, "text": f"row {i}"}) + "\n" for i in range(5))
    (tmp_path / "rows.jsonl").write_text(rows)

    def strategies(**changes: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": "flex-plan",
            "provider": {"kind": "openai", "base_url": url},
            "model": "gpt-5-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_completion_tokens": 50},
            **changes,
        }
        return plan_job(job_from_dict(spec, base_dir=tmp_path)).strategies

    found = strategies()
    assert found["flex"]["cost_usd"] == found["batch"]["cost_usd"]
    assert found["flex"]["tier"] == "flex" and found["flex"]["realtime_requests"] == 5
    # without a deadline the hybrid is the soonest (standard real time answers quicker); with
    # one, the cheapest split that meets it, as soon as it can at that price: flex
    assert found["hybrid"]["tier"] == "standard"
    due = strategies(deadline="30d")["hybrid"]
    assert (due["tier"], due["cost_usd"]) == ("flex", found["batch"]["cost_usd"])
    assert due["makespan_s"] < found["batch"]["makespan_s"]
    # a model without the tier, or a provider without it, has no flex row
    assert "flex" not in strategies(model="gpt-4o-mini", params={"max_tokens": 50})
    assert "flex" not in strategies(provider={"kind": "compatible", "base_url": url})
    assert "flex" in strategies(model="gpt-4o-mini", realtime={"flex": True})
