"""Strategies end to end: real time only, hybrid, and a deadline that moves work to real time.

Never paying twice: no request may be executed in both lanes (the server's ledger records batch
and real-time executions; real-time calls carry the request id in `x-batchpilot-custom-id`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchpilot.run import open_store, run_job
from batchpilot.server import LocalServer, RateLimit
from batchpilot.spec import job_from_dict

from helpers import client_for

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
