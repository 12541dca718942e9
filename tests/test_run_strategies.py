"""Strategies end to end: real time only, hybrid, and a deadline that moves work to real time.

Never paying twice: no request may be executed in both lanes (the server's ledger records batch
and real-time executions; real-time calls carry the request id in `x-batchpilot-custom-id`).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchpilot.run import RunStatus, open_store, run_job
from batchpilot.server import LocalServer, RateLimit
from batchpilot.spec import job_from_dict

from helpers import client_for, sql

MODEL = "gpt-4o-mini"


def job_for(tmp_path: Path, server: LocalServer, rows: int, **changes: Any) -> Any:
    data = [{"id": f"r{i:03d}", "text": f"sentence number {i}"} for i in range(rows)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    spec: dict[str, Any] = {
        "name": "strategies",
        "provider": {"kind": "compatible", "base_url": server.base_url},
        "model": MODEL,
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 12},
        "limits": {"requests_per_batch": 10, "queue_tokens": 10**6},
        "output": {"path": "out.jsonl"},
    }
    spec.update(changes)
    return job_from_dict(spec, base_dir=tmp_path)


def lanes(server: LocalServer) -> tuple[Counter[str], Counter[str]]:
    ledger = server.admin.ledger()
    batch = Counter(row["custom_id"] for row in ledger if row["batch_id"])
    realtime = Counter(row["custom_id"] for row in ledger if not row["batch_id"])
    return batch, realtime


def outputs(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def test_realtime_strategy_sends_everything_in_real_time(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=60, rate_limits={MODEL: RateLimit(rpm=1200)})
    job = job_for(tmp_path, server, 30, strategy="realtime", realtime={"rpm": 1200})
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    batch, realtime = lanes(server)
    assert not batch and len(realtime) == 30 and set(realtime.values()) == {1}
    rows = outputs(tmp_path)
    assert [r["id"] for r in rows] == [f"r{i:03d}" for i in range(30)]
    assert {r["lane"] for r in rows} == {"realtime"}
    store = open_store(tmp_path / "state")
    spent, _ = store.money(result.run_id)
    store.close()
    assert spent > 0


def test_hybrid_uses_both_lanes_and_never_both_for_one_request(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(
        time_scale=50,
        rate_limits={MODEL: RateLimit(rpm=300)},
        validation_delay_s=1,
        finalizing_delay_s=1,
    )
    job = job_for(
        tmp_path,
        server,
        60,
        strategy="hybrid",
        realtime={"rpm": 300},
        estimate={"batch_turnaround_hours": 0.002},
        limits={"requests_per_batch": 10, "queue_tokens": 200},
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    batch, realtime = lanes(server)
    assert batch and realtime, "the hybrid should use both lanes for this job"
    assert not set(batch) & set(realtime)
    assert len(batch) + len(realtime) == 60
    assert {r["status"] for r in outputs(tmp_path)} == {"succeeded"}
    # the real-time share comes from the end of the input, batches take the front
    by_row = [row["lane"] for row in outputs(tmp_path)]
    assert by_row == sorted(by_row) and by_row[0] == "batch" and by_row[-1] == "realtime"
    # the counts the store kept as both lanes moved requests equal a full recount
    recount = "SELECT state, COUNT(*) FROM requests WHERE run_id = ? GROUP BY state"
    store = open_store(tmp_path / "state")
    try:
        kept = {state: n for state, n in store.request_counts(result.run_id).items() if n}
    finally:
        store.close()
    assert kept == dict(sql(tmp_path / "state" / "batchpilot.sqlite3", recount, result.run_id))


def test_deadline_cancels_late_batches_and_finishes_in_real_time(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600, cancel_delay_s=0)
    state = tmp_path / "state"
    job = job_for(tmp_path, server, 20)
    first = run_job(job, state_dir=state, poll_interval=0.02, detach=True)
    assert first.status.requests["submitted"] == 20
    urgent = job_for(
        tmp_path, server, 20, strategy="hybrid", deadline="10m", realtime={"rpm": 6000}
    )
    result = run_job(urgent, state_dir=state, poll_interval=0.02)
    assert result.run_id == first.run_id, "a new deadline continues the same run"
    assert result.status.finished
    batch, realtime = lanes(server)
    assert not batch, "the batches were cancelled before any request ran"
    assert len(realtime) == 20 and set(realtime.values()) == {1}
    statuses = {b.status for b in client_for(server).batches.list()}
    assert statuses == {"cancelled"}
    store = open_store(state)
    kinds = {event["kind"] for event in store.events(result.run_id)}
    store.close()
    assert "deadline" in kinds


def test_hybrid_never_spends_past_the_budget_across_both_lanes(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    import pytest

    from batchpilot.errors import BudgetExceeded
    from batchpilot.pricing import PriceTable

    server = local_server_factory(
        time_scale=50,
        rate_limits={MODEL: RateLimit(rpm=300)},
        validation_delay_s=1,
        finalizing_delay_s=1,
    )
    prices = PriceTable.load()
    one_worst = prices.cost(MODEL, input_tokens=20, output_tokens=2000, batch=False)
    budget = 12 * one_worst
    job = job_for(
        tmp_path,
        server,
        60,
        strategy="hybrid",
        realtime={"rpm": 300},
        params={"max_tokens": 2000},
        budget={"max_usd": budget},
        estimate={"batch_turnaround_hours": 0.002},
        limits={"requests_per_batch": 10, "queue_tokens": 200},
    )
    seen: list[float] = []
    result = run_job(
        job,
        state_dir=tmp_path / "state",
        poll_interval=0.02,
        on_progress=lambda s: seen.append(s.spent_usd + s.reserved_usd),
    )
    assert result.status.finished
    assert seen and max(seen) <= budget + 1e-12, "reservations never pass the budget"
    batch, realtime = lanes(server)
    assert batch and realtime and not set(batch) & set(realtime)

    tiny = job_for(
        tmp_path,
        server,
        60,
        name="strategies-tiny",
        strategy="hybrid",
        realtime={"rpm": 300},
        params={"max_tokens": 2000},
        budget={"max_usd": one_worst / 4},
        limits={"requests_per_batch": 10, "queue_tokens": 200},
    )
    executed = len(server.admin.ledger())
    with pytest.raises(BudgetExceeded):
        run_job(tiny, state_dir=tmp_path / "state-tiny", poll_interval=0.02, fresh=True)
    assert len(server.admin.ledger()) == executed, "nothing is sent that the budget cannot cover"


def planned_shares(state: Path, run_id: str) -> list[int]:
    """How many pending requests each `hybrid` event sends real time, in order."""
    store = open_store(state)
    messages = [e["message"] for e in store.events(run_id) if e["kind"] == "hybrid"]
    store.close()
    pattern = re.compile(r"(\d+) of the \d+ pending requests go real time")
    return [int(m.group(1)) for m in map(pattern.match, messages) if m]


def test_the_lane_answers_while_the_runner_is_busy_with_batches(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    # batches take 2 s; the runner's thread is held for 1 s by the progress callback while
    # one is live and the lane runs: the real-time lane, in its own thread, goes on answering
    server = local_server_factory(time_scale=10, validation_delay_s=20, finalizing_delay_s=0)
    job = job_for(
        tmp_path,
        server,
        60,
        strategy="hybrid",
        realtime={"rpm": 30},
        estimate={"batch_turnaround_hours": 0.01},
        limits={"requests_per_batch": 10, "queue_tokens": 200},
    )
    during: list[tuple[int, int]] = []

    def busy(status: RunStatus) -> None:
        if not during and status.batches.get("submitted") and status.realtime_lane:
            before = sum(lanes(server)[1].values())
            time.sleep(1.0)
            during.append((before, sum(lanes(server)[1].values())))

    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02, on_progress=busy)
    assert result.status.finished
    ((before, after),) = during
    assert after > before, "the lane sent nothing while the runner's thread was busy"
    batch, realtime = lanes(server)
    assert batch and realtime and not set(batch) & set(realtime)
    assert sum(batch.values()) + sum(realtime.values()) == 60
    first = min(client_for(server).batches.list(), key=lambda b: b.created_at)
    assert first.completed_at is not None
    alongside = [
        row
        for row in server.admin.ledger()
        if not row["batch_id"] and first.created_at <= row["executed_at"] <= first.completed_at
    ]
    assert alongside, "no real-time request ran while the first batch was live"


def test_the_real_time_share_shrinks_once_batches_turn_out_quicker(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    # Estimated 5 min per batch against 10 s per real-time request (6 RPM): most requests
    # should go real time. The first batch is back in a fraction of a second, and the rest
    # goes in batches instead of waiting minutes for the real-time lane.
    server = local_server_factory(time_scale=50, validation_delay_s=1, finalizing_delay_s=1)
    job = job_for(
        tmp_path,
        server,
        60,
        strategy="hybrid",
        realtime={"rpm": 6},
        estimate={"batch_turnaround_hours": 300 / 3600},
        limits={"requests_per_batch": 10, "queue_tokens": 200},
    )
    started = time.monotonic()
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    assert time.monotonic() - started < 30, "the first plan would take minutes in real time"
    shares = planned_shares(tmp_path / "state", result.run_id)
    assert shares[0] >= 40 and shares[-1] <= 10, shares
    batch, realtime = lanes(server)
    assert sum(realtime.values()) <= 10 and not set(batch) & set(realtime)
    assert len(batch) + len(realtime) == 60
    assert {r["status"] for r in outputs(tmp_path)} == {"succeeded"}


def test_a_real_time_run_the_budget_cannot_start_stops_instead_of_waiting(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    import pytest

    from batchpilot.errors import BudgetExceeded
    from batchpilot.pricing import PriceTable

    server = local_server_factory(time_scale=60)
    one_worst = PriceTable.load().cost(MODEL, input_tokens=20, output_tokens=2000, batch=False)
    job = job_for(
        tmp_path,
        server,
        30,
        strategy="realtime",
        realtime={"rpm": 6000, "concurrency": 4},
        params={"max_tokens": 2000},
        budget={"max_usd": one_worst / 2},
    )
    with pytest.raises(BudgetExceeded, match="budget"):
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert server.admin.ledger() == []
    store = open_store(tmp_path / "state")
    (run,) = store.runs()
    counts = store.request_counts(run.id)
    kinds = [event["kind"] for event in store.events(run.id)]
    store.close()
    assert run.status == "stopped" and counts["pending"] == 30
    assert "budget" in kinds
