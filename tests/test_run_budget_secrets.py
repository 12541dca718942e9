"""Money is a hard limit and secrets stay secret: a real job against the local server.

Budgets reserve every batch's worst case (each request answered at its max_tokens) before it is
created and settle to the usage the server reports; a run never holds or spends more than its
budget. API keys reach no file of the state directory, no export, no log, no event and no
error message.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import BudgetExceeded, ProviderRejected, UserInputError
from batchpilot.plan import plan_job
from batchpilot.pricing import PriceTable
from batchpilot.run import export_rows, open_store, run_job
from batchpilot.run.status import RunStatus
from batchpilot.server import LocalServer
from batchpilot.spec import JobSpec, job_from_dict

Factory = Callable[..., LocalServer]
FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}
ROWS = 20
SECRET = "sk-live-SECRET-abc123"
WRONG = "sk-live-WRONG-def456"


def make_job(
    tmp_path: Path,
    base_url: str,
    *,
    name: str = "money",
    max_tokens: int = 20,
    budget: float | None = None,
    output: bool = False,
) -> JobSpec:
    data = tmp_path / "input.jsonl"
    if not data.exists():
        rows = (
            json.dumps({"id": f"r{i}", "text": f"say something about {i}"}) for i in range(ROWS)
        )
        data.write_text("\n".join(rows) + "\n")
    spec: dict[str, Any] = {
        "name": name,
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "input.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": max_tokens},
        "limits": {"requests_per_batch": 2, "queue_tokens": 10**6},
        "budget": {"max_usd": budget},
    }
    if output:
        spec["output"] = {"path": "out.jsonl"}
    return job_from_dict(spec, base_dir=tmp_path)


def worst_per_request(tmp_path: Path, max_tokens: int) -> float:
    """Every row renders to the same number of tokens, so each worst case is the same."""
    planned = plan_job(make_job(tmp_path, "http://127.0.0.1:9/v1", max_tokens=max_tokens))
    worst = planned.cost["batch_worst"]
    assert worst is not None and planned.requests == ROWS
    return worst / ROWS


# money ------------------------------------------------------------------------------------


def test_budget_stops_the_run_before_it_could_be_passed(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    worst = worst_per_request(tmp_path, 2000)
    # one request's worst case fits, two do not; actual answers cost ~1/200 of the worst case,
    # so a few requests run one after another before even one worst case no longer fits
    budget = float(f"{worst * 1.03:.3g}")
    seen: list[RunStatus] = []
    job = make_job(tmp_path, server.base_url, max_tokens=2000, budget=budget)
    with pytest.raises(BudgetExceeded) as exceeded:
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02, on_progress=seen.append)
    message = str(exceeded.value)
    assert f"the budget of ${budget:.3g} is used up" in message, message
    assert "still pending" in message and "budget.max_usd" in message
    assert "$0.00 " not in message  # small sums are shown with their digits

    assert seen
    for status in seen:
        assert status.spent_usd + status.reserved_usd <= budget + 1e-12, status
        assert status.reserved_usd <= worst + 1e-12  # never two worst cases at once

    store = open_store(tmp_path / "state")
    try:
        run = store.runs()[0]
        counts = store.request_counts(run.id)
        spent, reserved = store.money(run.id)
        rows = list(export_rows(store, run.id))
        pending = store.pending(run.id, 1)
        events = [e["kind"] for e in store.events(run.id)]
    finally:
        store.close()
    executions = Counter(entry["custom_id"] for entry in server.admin.ledger())
    assert 0 < counts["succeeded"] < ROWS
    assert counts["succeeded"] == len(executions) == sum(executions.values())
    assert counts["pending"] == ROWS - counts["succeeded"] and counts["failed"] == 0
    assert {r.request_id for r in rows if r.status == "succeeded"} == set(executions)
    assert reserved == 0 and 0 < spent <= budget
    assert spent == pytest.approx(sum(r.cost_usd or 0 for r in rows))
    # it stopped because the next worst case no longer fits, not earlier
    prices = PriceTable.load()
    following = prices.cost(
        "gpt-4o-mini",
        input_tokens=pending[0].input_tokens,
        output_tokens=pending[0].max_output_tokens,
        batch=True,
    )
    assert following == pytest.approx(worst)
    assert budget - spent < following <= budget - spent + max(r.cost_usd or 0 for r in rows)
    assert run.status == "stopped" and "budget" in events


def test_budget_that_fits_settles_to_actual_usage(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    worst = worst_per_request(tmp_path, 2000)
    budget = float(f"{worst * 4.5:.3g}")  # at most four worst cases held at a time
    seen: list[RunStatus] = []
    job = make_job(tmp_path, server.base_url, max_tokens=2000, budget=budget)
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02, on_progress=seen.append)
    assert result.status.finished and result.status.requests["succeeded"] == ROWS
    assert all(s.spent_usd + s.reserved_usd <= budget + 1e-12 for s in seen)
    assert max(s.reserved_usd for s in seen) > 0 or result.status.spent_usd > 0
    store = open_store(tmp_path / "state")
    try:
        rows = list(export_rows(store, result.run_id))
        spent, reserved = store.money(result.run_id)
    finally:
        store.close()
    prices = PriceTable.load()
    settled = sum(
        prices.cost(
            "gpt-4o-mini",
            input_tokens=r.input_tokens or 0,
            output_tokens=r.output_tokens or 0,
            batch=True,
        )
        for r in rows
    )
    assert reserved == 0
    assert spent == pytest.approx(settled) == pytest.approx(result.status.spent_usd)
    assert 0 < spent < worst * ROWS / 50  # the answers were far shorter than max_tokens
    assert all(0 < (r.output_tokens or 0) < 2000 for r in rows)
    assert Counter(e["custom_id"] for e in server.admin.ledger()) == Counter(
        {r.request_id: 1 for r in rows}
    )


# secrets ----------------------------------------------------------------------------------


def files_containing(directory: Path, *needles: str) -> list[str]:
    """Every file under `directory` (SQLite database, WAL and batch files included) holding
    one of the needles."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


def test_the_key_is_never_stored_logged_or_exported(
    tmp_path: Path,
    local_server_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = local_server_factory(api_key=SECRET, **FAST)
    state = tmp_path / "state"
    leaks: list[str] = []

    def check_files(status: RunStatus) -> None:  # while the store is open: WAL included
        leaks.extend(files_containing(state, SECRET))

    job = make_job(tmp_path, server.base_url, output=True)
    result = run_job(job, state_dir=state, poll_interval=0.02, on_progress=check_files)
    assert result.status.finished and result.status.requests["succeeded"] == ROWS
    assert leaks == []
    assert files_containing(state, SECRET) == []
    assert result.output is not None and SECRET.encode() not in result.output.read_bytes()
    store = open_store(state)
    try:
        exported = [asdict(row) for row in export_rows(store, result.run_id)]
        events = store.events(result.run_id)
        spec = store.run(result.run_id)
    finally:
        store.close()
    assert SECRET not in json.dumps(exported, default=str)
    assert SECRET not in json.dumps(events)
    assert spec is not None and SECRET not in spec.spec_json
    assert caplog.records
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.name
    assert SECRET not in caplog.text


def test_a_wrong_key_stops_the_run_without_naming_either_key(
    tmp_path: Path,
    local_server_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = local_server_factory(api_key=SECRET, **FAST)
    state = tmp_path / "state"
    job = make_job(tmp_path, server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", WRONG)
    with pytest.raises((ProviderRejected, UserInputError)) as refused:
        run_job(job, state_dir=state, poll_interval=0.02)
    message = str(refused.value)
    assert "401" in message and SECRET not in message and WRONG not in message
    assert SECRET not in caplog.text and WRONG not in caplog.text
    assert files_containing(state, SECRET, WRONG) == []
    assert server.admin.ledger() == []

    # nothing was failed for good: with the right key the same run continues and finishes
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    result = run_job(job, state_dir=state, poll_interval=0.02)
    assert result.status.finished and result.status.requests["succeeded"] == ROWS
    assert set(Counter(e["custom_id"] for e in server.admin.ledger()).values()) == {1}
    store = open_store(state)
    try:
        events = store.events(result.run_id)
    finally:
        store.close()
    assert any(e["kind"] == "error" and "401" in e["message"] for e in events)
    assert not any(WRONG in e["message"] or SECRET in e["message"] for e in events)


def test_credentials_in_the_base_url_are_not_stored(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    url = server.base_url.replace("http://", "http://someone:hunter2@")
    result = run_job(make_job(tmp_path, url), state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    store = open_store(tmp_path / "state")
    try:
        run = store.run(result.run_id)
    finally:
        store.close()
    assert run is not None
    assert "hunter2" not in run.spec_json and "someone" not in run.spec_json
    stored = json.loads(run.spec_json)["provider"]["base_url"]
    assert stored == server.base_url
    assert files_containing(tmp_path / "state", "hunter2") == []
