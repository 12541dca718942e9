"""Every state makes progress or ends: nothing to do finishes at once, two processes never both
plan one run, and the run lock comes before anything is started."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpilot.data.rows import Row
from batchpilot.errors import StateError
from batchpilot.run import RunStatus, open_store, run_job
from batchpilot.run.workspace import run_lock
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import JobSpec, job_from_dict

from helpers import sql

Factory = Callable[..., LocalServer]
NOT_FOUND = re.compile(r"answered 'not found' (\d+) times in a row")
FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}


def make_job(tmp_path: Path, base_url: str, rows: int, **changes: Any) -> JobSpec:
    lines = [json.dumps({"id": f"r{i}", "text": f"say something about {i}"}) for i in range(rows)]
    (tmp_path / "input.jsonl").write_text("".join(line + "\n" for line in lines))
    spec: dict[str, Any] = {
        "name": "progress",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "input.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 20},
        "limits": {"requests_per_batch": 5, "queue_tokens": 10**6},
        **changes,
    }
    return job_from_dict(spec, base_dir=tmp_path)


def watchdog(seconds: float) -> Callable[[RunStatus], None]:
    """A progress callback that ends a run that takes longer than `seconds` with an error."""
    until = time.monotonic() + seconds

    def check(status: RunStatus) -> None:
        if time.monotonic() > until:
            raise TimeoutError(f"no end after {seconds} s: {status.requests} {status.batches}")

    return check


def test_an_empty_input_finishes_at_once(tmp_path: Path, local_server_factory: Factory) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server.base_url, 0, output={"path": "out.jsonl"})
    result = run_job(
        job, state_dir=tmp_path / "state", poll_interval=0.02, on_progress=watchdog(10)
    )
    assert result.status.finished and result.status.total == 0
    assert (tmp_path / "out.jsonl").read_text() == ""
    store = open_store(tmp_path / "state")
    messages = [e["message"] for e in store.events(result.run_id) if e["kind"] == "finished"]
    store.close()
    assert messages == ["nothing to do: the run has no requests"]
    assert not server.admin.ledger()


def test_two_first_runs_of_one_job_plan_it_once(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server.base_url, 4)
    planning, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def slow_rows() -> Iterator[Row]:
        planning.set()
        release.wait(5)
        yield from (
            Row(index=i, id=f"r{i}", data={"id": f"r{i}", "text": f"about {i}"}, source="test")
            for i in range(4)
        )

    def first() -> None:
        try:
            outcome["result"] = run_job(
                job, state_dir=tmp_path / "state", rows=slow_rows(), poll_interval=0.02
            )
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert planning.wait(10)
        with pytest.raises(StateError, match="already being run"):
            run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    finally:
        release.set()
        thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].status.finished and outcome["result"].status.total == 4


def test_a_refused_run_starts_nothing(
    tmp_path: Path, local_server_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchpilot.run.one as api

    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server.base_url, 3)
    started: list[str] = []
    real = api.provider_for

    def recording(spec: Any, **options: Any) -> Any:
        started.append(spec.kind)
        return real(spec, **options)

    monkeypatch.setattr(api, "provider_for", recording)
    first = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    started.clear()
    with run_lock(tmp_path / "state", first.run_id), pytest.raises(StateError, match="already"):
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert started == [], "the provider (a local model) was started before the lock was taken"


def faulty(factory: Factory, *faults: dict[str, Any], **settings: Any) -> LocalServer:
    plan = FaultPlan.model_validate({"seed": 7, "faults": list(faults)})
    return factory(faults=plan, **{**FAST, **settings})


def stop_when(
    ready: Callable[[RunStatus], bool], seconds: float = 20
) -> Callable[[RunStatus], None]:
    """A progress callback that ends the run (as a crash would) once `ready` holds."""
    alarm = watchdog(seconds)

    def check(status: RunStatus) -> None:
        if ready(status):
            raise KeyboardInterrupt
        alarm(status)

    return check


def executions(server: LocalServer) -> Counter[str]:
    return Counter(row["custom_id"] for row in server.admin.ledger() if row["status_code"] == 200)


@pytest.mark.parametrize(
    "later",
    [
        {"strategy": "hybrid", "deadline": "10m", "estimate": {"batch_turnaround_hours": 1}},
        {"strategy": "realtime"},
    ],
    ids=["near-deadline", "realtime"],
)
def test_batches_never_created_are_settled_when_batches_are_not_wanted(
    tmp_path: Path, local_server_factory: Factory, later: dict[str, Any]
) -> None:
    refused = {"kind": "http_error", "route": "POST /v1/batches", "status": 503, "first": 10**6}
    server = faulty(local_server_factory, refused)
    state = tmp_path / "state"
    job = make_job(tmp_path, server.base_url, 12, output={"path": "out.jsonl"})
    with pytest.raises(KeyboardInterrupt):
        run_job(
            job,
            state_dir=state,
            poll_interval=0.02,
            on_progress=stop_when(lambda s: s.batches.get("creating", 0) >= 1),
        )
    urgent = make_job(
        tmp_path, server.base_url, 12, output={"path": "out.jsonl"}, realtime={"rpm": 6000}, **later
    )
    result = run_job(urgent, state_dir=state, poll_interval=0.02, on_progress=watchdog(20))
    assert result.status.finished
    assert result.status.requests["succeeded"] == 12
    assert set(executions(server).values()) == {1} and len(executions(server)) == 12
    store = open_store(state)
    batches = {b.state for b in store.batches(result.run_id)}
    store.close()
    assert batches == {"abandoned"}


def test_a_batch_that_is_not_found_is_polled_as_often_as_it_may_still_finish(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    # 25 'not found' answers after create, and the batch takes 5 s: the waits between polls
    # must stay within what a batch that should be back in seconds can still do, not grow to
    # a minute
    missing = {"kind": "not_found_after_create", "nth": [1], "calls": 25}
    server = faulty(local_server_factory, missing, validation_delay_s=2500)
    job = make_job(tmp_path, server.base_url, 5, estimate={"batch_turnaround_hours": 0.002})
    waits: list[str] = []
    alarm = watchdog(40)

    def watch(status: RunStatus) -> None:
        waits.extend(status.waiting)
        alarm(status)

    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02, on_progress=watch)
    assert result.status.finished and result.status.requests["succeeded"] == 5
    counts = [int(m.group(1)) for m in map(NOT_FOUND.search, waits) if m]
    assert counts and max(counts) > 10, waits[-3:]
    assert not result.status.waiting


def test_an_empty_input_with_a_target_ends_saying_so(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    job = make_job(tmp_path, server.base_url, 0, target={"valid": 3})
    result = run_job(
        job, state_dir=tmp_path / "state", poll_interval=0.02, on_progress=watchdog(10)
    )
    assert result.status.total == 0 and result.status.valid == 0
    store = open_store(tmp_path / "state")
    messages = [e["message"] for e in store.events(result.run_id) if e["kind"] == "target"]
    store.close()
    assert messages[-1].startswith("the input is used up with 0 of 3 valid")


def test_a_batch_that_is_never_found_by_id_is_followed_through_the_listing(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    # the provider answers 404 for the batch whenever it is asked by id, but lists it
    missing = {"kind": "not_found_after_create", "nth": [1], "calls": 10**6}
    server = faulty(local_server_factory, missing)
    job = make_job(tmp_path, server.base_url, 5, estimate={"batch_turnaround_hours": 0.002})
    result = run_job(
        job, state_dir=tmp_path / "state", poll_interval=0.02, on_progress=watchdog(40)
    )
    assert result.status.finished and result.status.requests["succeeded"] == 5
    assert set(executions(server).values()) == {1}
    store = open_store(tmp_path / "state")
    (batch,) = store.batches(result.run_id)
    store.close()
    assert batch.state == "finished" and batch.remote_status == "completed"


def test_a_batch_the_provider_lost_past_its_window_gives_its_requests_back(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = faulty(
        local_server_factory, {"kind": "finalizing_stall", "nth": [1], "seconds": 10**9}
    )
    state = tmp_path / "state"
    job = make_job(tmp_path, server.base_url, 5)
    first = run_job(job, state_dir=state, poll_interval=0.02, detach=True)
    assert first.status.requests["submitted"] == 5
    # the provider no longer knows the batch, lists nothing of ours for it, and its 24 h window
    # ended long ago: nothing can come of it any more
    sql(
        state / "batchpilot.sqlite3",
        "UPDATE batches SET remote_id = 'batch_gone', input_file_id = 'file-gone', "
        "submitted_at_utc = '2020-01-01T00:00:00.000000Z' WHERE run_id = ?",
        first.run_id,
    )
    result = run_job(job, state_dir=state, poll_interval=0.02, on_progress=watchdog(30))
    assert result.status.finished and result.status.requests["succeeded"] == 5
    store = open_store(state)
    try:
        lost, again = store.batches(result.run_id)
        events = [e["message"] for e in store.events(result.run_id) if e["kind"] == "lost"]
        rows = list(store.joined_rows(result.run_id))
    finally:
        store.close()
    assert lost.state == again.state == "finished" and again.requests == 5
    assert events and events[0].startswith("batch 1 (batch_gone) is gone")
    assert [row.attempts for row in rows] == [2] * 5


def test_a_batch_that_no_longer_fits_a_lowered_budget_is_packed_again(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    from batchpilot.errors import BudgetExceeded
    from batchpilot.plan import plan_job

    refused = {"kind": "http_error", "route": "POST /v1/batches", "status": 503, "first": 2}
    server = faulty(local_server_factory, refused)
    state = tmp_path / "state"
    job = make_job(tmp_path, server.base_url, 5, budget={"max_usd": 1.0})
    with pytest.raises(KeyboardInterrupt):
        run_job(
            job,
            state_dir=state,
            poll_interval=0.02,
            on_progress=stop_when(lambda s: s.batches.get("creating", 0) >= 1),
        )
    worst = plan_job(job).cost["batch_worst"]
    assert worst is not None
    # the one batch of five holds five requests' worst case; the lowered budget holds two
    budget = 2.5 * worst / 5
    lowered = make_job(tmp_path, server.base_url, 5, budget={"max_usd": budget})
    seen: list[float] = []

    def watch(status: RunStatus) -> None:
        seen.append(status.spent_usd + status.reserved_usd)
        alarm(status)

    alarm = watchdog(30)
    # the run ends, by finishing or by stopping for the budget, instead of waiting forever for
    # a reservation that cannot come
    with pytest.raises(BudgetExceeded):
        run_job(lowered, state_dir=state, poll_interval=0.02, on_progress=watch)
    assert seen and max(seen) <= budget + 1e-12, "reservations never pass the lowered budget"
    assert set(executions(server).values()) == {1}
    store = open_store(state)
    run_id = store.runs()[0].id
    events = [e["message"] for e in store.events(run_id) if e["kind"] == "budget"]
    sizes = [b.requests for b in store.batches(run_id) if b.state == "finished"]
    store.close()
    assert any("no longer fits the budget" in message for message in events)
    assert sizes and max(sizes) <= 2
