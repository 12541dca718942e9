"""Several workers drive one run at once on a PostgreSQL store (`worker --per-run`): each creates
and ingests batches of its own, none is created twice and no request runs twice; they race for
one budget that what they hold together never passes; and the batches of a co-driver that dies
are adopted by another once.

Every test here needs a PostgreSQL server (`BATCHPILOT_TEST_POSTGRES`, `.ci/postgres`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchpilot.errors import UserInputError
from batchpilot.run.defaults import POLL_INTERVAL_ENV
from batchpilot.run.lease import PER_RUN_ENV
from batchpilot.run.worker import WorkerReport, work
from batchpilot.server import LocalServer
from batchpilot.store import Store
from batchpilot.store.opening import STORE_ENV, open_store
from test_cli_run import write_job
from test_crash import remote_tags
from test_store_contract import POSTGRES_ENV, postgres_url
from test_workers import invoke

FAST = {"validation_delay_s": 0, "finalizing_delay_s": 0}


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: Any) -> None:
    monkeypatch.setenv(POLL_INTERVAL_ENV, "0.05")


@contextmanager
def workers(state: Path, count: int, **options: Any) -> Iterator[list[WorkerReport]]:
    """`count` workers in threads of this process, each with a store of its own, sharing the
    runs of `state`'s store until none has work left; their reports once they exit."""
    reports: list[WorkerReport] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            reports.append(work(state, exit_when_idle=True, idle_s=0.05, **options))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield reports
    finally:
        for thread in threads:
            thread.join(timeout=240)
    assert not errors, errors
    assert len(reports) == count


def ledger(server: LocalServer) -> Counter[str]:
    """How many times the server ran each request, in batches and in real time."""
    rows = httpx.get(server.base_url.removesuffix("/v1") + "/_batchpilot/ledger").json()
    return Counter(row["custom_id"] for row in rows)


def owners(store: Store, run_id: str, table: str) -> Counter[str | None]:
    rows = store._db.execute(  # type: ignore[attr-defined]
        f"SELECT worker_id FROM {table} WHERE run_id = %s".encode(), (run_id,)
    ).fetchall()
    return Counter(row[0] for row in rows)


def test_workers_on_one_run_each_create_and_ingest_batches_of_their_own(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], monkeypatch: Any
) -> None:
    monkeypatch.setenv(STORE_ENV, postgres_url(tmp_path))
    server = local_server_factory(time_scale=200, **FAST)
    # two batches of five (50 input tokens each) in the queue at a time: the workers take
    # turns at forming them as their batches end
    limits = {"requests_per_batch": 5, "queue_tokens": 100}
    job = write_job(tmp_path, server.base_url, rows=60, limits=limits)
    state = tmp_path / "state"
    result = invoke("run", str(job), "--state", str(state), "--detach", "--quiet")
    assert result.exit_code == 0, result.output
    with workers(state, 3, per_run=None, lease_s=5) as reports:
        pass
    store = open_store(state)
    try:
        (run,) = store.runs()
        assert run.status == "finished"
        assert store.request_counts(run.id)["succeeded"] == 60
        batches = store.batches(run.id)
        drove = owners(store, run.id, "batches")
    finally:
        store.close()
    ran = ledger(server)
    assert len(ran) == 60 and set(ran.values()) == {1}, "a request ran twice"
    tags = remote_tags(server.base_url, run.id)
    assert max(tags.values()) == 1, f"a batch was created twice: {tags}"
    assert len(tags) == len([b for b in batches if b.remote_id is not None]) >= 12
    assert len(drove) > 1, f"one worker drove every batch: {drove}"
    assert set(drove) <= {r.worker for r in reports}
    assert all(outcome == "finished" for r in reports for _, outcome in r.runs)


def test_workers_racing_for_one_budget_never_hold_more_than_it(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], monkeypatch: Any
) -> None:
    """Two workers send real-time requests of one run with room in the budget for about six
    worst cases at once: what both hold and have spent stays within it all along."""
    monkeypatch.setenv(STORE_ENV, postgres_url(tmp_path))
    server = local_server_factory(realtime_latency_s=0.15, **FAST)
    budget = 0.012  # each request may cost 0.002 at worst: 1,000 output tokens at $2 a million
    job = write_job(
        tmp_path,
        server.base_url,
        rows=40,
        strategy="realtime",
        params={"max_tokens": 1000},
        prices={"gpt-4o-mini": {"input": 1.0, "output": 2.0}},
        budget={"max_usd": budget},
        # fewer slots than the budget has room for: a worker that claims all it may at once
        # cannot take every request alone, so both race for the last money
        realtime={"concurrency": 3},
    )
    state = tmp_path / "state"
    result = invoke("run", str(job), "--state", str(state), "--detach", "--quiet")
    assert result.exit_code == 0, result.output
    watch = open_store(state)
    (run,) = watch.runs()
    held: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            held.append(sum(watch.holdings(run.id)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with workers(state, 2, per_run=None, lease_s=5) as reports:
            pass
    finally:
        done.set()
        sampler.join()
    try:
        spent, _ = watch.money(run.id)
        sent = owners(watch, run.id, "requests")
    finally:
        watch.close()
    assert held and max(held) <= budget + 1e-9, f"held {max(held)} of a budget of {budget}"
    assert spent <= budget + 1e-9
    assert len(set(sent) & {r.worker for r in reports}) == 2, f"one worker sent all: {sent}"
    assert max(held) > budget - 0.002 - 1e-9, "the workers never reached the budget"


def test_the_batches_of_a_co_driver_that_died_are_adopted_once(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], monkeypatch: Any
) -> None:
    """A co-driver that made batches dies (its lease is never renewed): the other workers take
    its batches over once its lease runs out, and each is ingested once, never created again."""
    url = postgres_url(tmp_path)
    monkeypatch.setenv(STORE_ENV, url)
    server = local_server_factory(time_scale=50, **FAST)
    limits = {"requests_per_batch": 5, "queue_tokens": 100}
    job = write_job(tmp_path, server.base_url, rows=30, limits=limits)
    state = tmp_path / "state"
    result = invoke("run", str(job), "--state", str(state), "--detach", "--quiet")
    assert result.exit_code == 0, result.output
    store = open_store(state)
    try:
        (run,) = store.runs()
        made = [b.id for b in store.batches(run.id)]
        assert made, "the run made no batches before it detached"
        # a worker that holds a lease on the run and owns its batches, then dies
        assert store.take_run(run.id, "dead:1:abc", 0.5, per_run=None) is None
        assert store.adopt_batches(run.id, "dead:1:abc") == made
    finally:
        store.close()
    with workers(state, 2, per_run=None, lease_s=5) as reports:
        pass
    store = open_store(state)
    try:
        events = [e["message"] for e in store.events(run.id)]
        drove = owners(store, run.id, "batches")
        assert store.request_counts(run.id)["succeeded"] == 30
    finally:
        store.close()
    assert "dead:1:abc" not in drove
    adopted = [m for m in events if "of a co-driver whose lease ran out" in m]
    taken = sorted(
        int(i) for m in adopted for i in m.split("batches ")[1].split(" of")[0].split(", ")
    )
    assert taken == made, events
    tags = remote_tags(server.base_url, run.id)
    assert max(tags.values()) == 1, f"a batch was created twice: {tags}"
    ran = ledger(server)
    assert len(ran) == 30 and set(ran.values()) == {1}
    assert {r.worker for r in reports} >= set(drove) - {None}


def test_run_joins_a_run_that_a_live_worker_drives_as_far_as_per_run_allows(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], monkeypatch: Any
) -> None:
    monkeypatch.setenv(STORE_ENV, postgres_url(tmp_path))
    server = local_server_factory(time_scale=500, **FAST)
    job, state = write_job(tmp_path, server.base_url), str(tmp_path / "state")
    result = invoke("run", str(job), "--state", state, "--detach", "--quiet")
    assert result.exit_code == 0, result.output
    store = open_store(Path(state))
    try:
        (run,) = store.runs()
        assert store.take_run(run.id, "elsewhere:1:abc", 60, per_run=None) is None
        monkeypatch.setenv(PER_RUN_ENV, "many")
        result = invoke("run", str(job), "--state", state, "--quiet")
        assert result.exit_code == 2 and f"{PER_RUN_ENV} must be a whole number" in result.output
        monkeypatch.setenv(PER_RUN_ENV, "2")
        result = invoke("run", str(job), "--state", state, "--quiet")
        assert result.exit_code == 0, result.output
        assert store.run(run.id).status == "finished"  # type: ignore[union-attr]
        assert store.drivers(run.id) == ["elsewhere:1:abc"]  # its own lease given back
    finally:
        store.close()


def test_more_than_one_worker_per_run_needs_a_postgresql_store(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    with pytest.raises(UserInputError, match="--per-run other than 1 needs a PostgreSQL store"):
        work(tmp_path / "state", exit_when_idle=True, per_run=2)
    result = invoke("worker", "--state", str(tmp_path / "state"), "--per-run", "-1")
    assert result.exit_code == 2 and "--per-run must be a whole number >= 0" in result.output


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_workers_killed_at_random_on_one_run_end_it_as_one_process_does(tmp_path: Path) -> None:
    """`bench/worker_kills.py` at a reduced size: three workers on one run against `batchpilot
    serve`, killed with SIGKILL five times and started again; no batch created twice, no
    request run twice, and the export equals a single process's."""
    url = os.environ.get(POSTGRES_ENV) or postgres_url(tmp_path)  # skips (or fails) without one
    script = Path(__file__).parent.parent / "bench" / "worker_kills.py"
    command = [sys.executable, str(script), "--requests", "400", "--workers", "3"]
    command += ["--kills", "5", "--per-batch", "20", "--url", url]
    done = subprocess.run(command, capture_output=True, timeout=1700, cwd=tmp_path)
    output = done.stdout.decode()
    assert done.returncode == 0, output + done.stderr.decode()
    found = json.loads(output[output.index("{") : output.rindex("}") + 1])
    assert found["kills"] == 5 and found["workers_started"] == 8
    assert found["ran"] == 400 and found["ran_twice"] == 0 and found["created_twice"] == 0
    assert found["export_equal"] and found["ledger_is_the_store"]
    assert found["drivers"] > 1
