"""Many workers on one shared store: `batchpilot worker` processes take a job's run under a
lease, are killed with SIGKILL at random and started again, and the run ends as a single
process would end it, with no batch created twice; and two jobs on one model share one
organisation's queue limit at the provider.

Every test here needs a PostgreSQL server (`BATCHPILOT_TEST_POSTGRES`, `.ci/postgres`), except
those on the SQLite store, which shares a run between workers of one machine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batchpilot import load_job, run_job
from batchpilot.cli import cli
from batchpilot.run.lease import LeaseLost, RunLease
from batchpilot.server import LocalServer
from batchpilot.store import RunRecord, SQLiteStore, Store, utc_now
from batchpilot.store.opening import STORE_ENV, open_store
from test_cli_run import write_job as cli_job
from test_crash import comparable, remote_tags, start_server, write_job
from test_store_contract import postgres_url


def _env(store: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != STORE_ENV}
    return env if store is None else {**env, STORE_ENV: store}


def worker_command(state: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "batchpilot", "worker", "--state", str(state)),
        *("--lease", "1.5", "--idle", "0.1", *extra),
    ]


def export(state: Path, out: Path, store: str | None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchpilot", "export", "--state", str(state), "-o", str(out)],
        capture_output=True,
        env=_env(store),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()


def holder_pid(store: Store) -> int | None:
    """The pid of the worker whose lease holds the (one) run, if one does; 0 once it ended."""
    runs = store.runs()
    if runs and runs[0].status == "finished":
        return 0
    lease = store.lease_of(runs[0].id) if runs else None
    return None if lease is None or lease[1] < 0 else int(lease[0].split(":")[1])


def check_postgres_ledger(base_url: str, store_url: str, state: Path) -> None:
    """Every batch execution the server saw is an attempt the store recorded, and no local
    batch was created twice at the provider."""
    ledger = httpx.get(base_url.removesuffix("/v1") + "/_batchpilot/ledger").json()
    executed = Counter(row["custom_id"] for row in ledger)
    store = open_store(state, {STORE_ENV: store_url})
    try:
        (run,) = store.runs()
        recorded = Counter(
            row[0]
            for row in store._db.execute(  # type: ignore[attr-defined]
                "SELECT request_id FROM attempts WHERE run_id = %s AND lane = 'batch'", (run.id,)
            )
        )
        made = sum(1 for b in store.batches(run.id) if b.remote_id is not None)
        events = [e["message"] for e in store.events(run.id) if e["kind"] == "worker"]
    finally:
        store.close()
    assert executed == recorded, "the ledger and the store disagree on executions"
    tags = remote_tags(base_url, run.id)
    assert tags and max(tags.values()) == 1, f"a local batch was created twice remotely: {tags}"
    assert len(tags) == made
    assert any("takes the run over" in m for m in events), events


WAVES = {"requests_per_batch": 5, "queue_tokens": 225, "max_attempts": 5}


def run_process(job: Path, state: Path, store: str | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "batchpilot", "run", str(job), "--state", str(state)),
            *("--quiet", "--poll-interval", "0.05", "--allow-failures"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(store),
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_workers_killed_at_random_end_the_run_as_one_process_does(tmp_path: Path) -> None:
    store_url = postgres_url(tmp_path)
    rng = random.Random(int(os.environ.get("BATCHPILOT_CRASH_SEED", "7")))
    reference, shared = tmp_path / "reference", tmp_path / "shared"
    reference.mkdir()
    shared.mkdir()
    servers: list[subprocess.Popen[bytes]] = []
    processes: list[subprocess.Popen[bytes]] = []
    opened: list[Store] = []

    def start(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        processes.append(process)
        return process

    def start_worker() -> subprocess.Popen[bytes]:
        command = worker_command(shared / "state")
        return start(
            subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(store_url)
            )
        )

    try:
        for directory in (reference, shared):
            server, url = start_server(directory)
            servers.append(server)
            # waves of three batches in the queue: the run lasts long enough to be killed often
            write_job(directory, url, limits=WAVES)
        # the single process (SQLite) runs beside the shared run, on a server of its own
        alone = start(run_process(reference / "job.yaml", reference / "state", None))
        # `run` plans the job and works on it like a worker; three workers wait to take over
        first = start(run_process(shared / "job.yaml", shared / "state", store_url))
        pool = [start_worker() for _ in range(3)]
        watch = open_store(shared / "state", {STORE_ENV: store_url})
        opened.append(watch)
        deadline = time.monotonic() + 300
        while holder_pid(watch) is None:
            assert time.monotonic() < deadline and first.poll() is None, "the run never started"
            time.sleep(0.05)
        kills = 0
        while (pid := holder_pid(watch)) != 0:
            assert time.monotonic() < deadline + 300, "the run never finished"
            alive = [p for p in [first, *pool] if p.poll() is None]
            victim = next((p for p in alive if p.pid == pid), None)
            if victim is None or kills >= 5:
                time.sleep(0.05)
                continue
            time.sleep(rng.uniform(0.5, 2.5))  # a random moment of its work
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills += 1
            if victim in pool:
                pool.remove(victim)
                pool.append(start_worker())
        assert first.wait(timeout=240) in (0, -signal.SIGKILL)
        for process in pool:
            process.terminate()  # idle workers stop on SIGTERM
            assert process.wait(timeout=120) == 0
        assert kills >= 3, "the run finished before the workers were killed often enough"
        _, stderr = alone.communicate(timeout=240)
        assert alone.returncode == 0, stderr.decode()
        export(reference / "state", reference / "export.jsonl", None)
        export(shared / "state", shared / "export.jsonl", store_url)
        assert comparable(shared / "export.jsonl") == comparable(reference / "export.jsonl")
        check_postgres_ledger(url, store_url, shared / "state")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        for store in opened:
            store.close()
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


# a worker on one machine, leases, and the limits an organisation shares ----------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_worker_drives_a_detached_run_to_its_end(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job, state = cli_job(tmp_path, server.base_url), str(tmp_path / "state")
    result = invoke("run", str(job), "--state", state, "--detach", "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("worker", "--state", state, "--exit-when-idle", "--idle", "0.05", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ((run_id, outcome),) = [(r["run_id"], r["outcome"]) for r in report["runs"]]
    assert outcome == "finished"
    store = open_store(Path(state), {})
    try:
        assert store.request_counts(run_id)["succeeded"] == 12
        assert store.lease_of(run_id) is None  # given back
        told = [e["message"] for e in store.events(run_id) if e["kind"] == "worker"]
        assert told == [f"worker {report['worker']} takes the run"]
    finally:
        store.close()
    again = invoke("worker", "--state", state, "--exit-when-idle", "--json")
    assert json.loads(again.stdout)["runs"] == []


def test_run_refuses_a_run_that_a_live_worker_holds(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], monkeypatch: Any
) -> None:
    monkeypatch.setenv(STORE_ENV, postgres_url(tmp_path))
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job, state = cli_job(tmp_path, server.base_url), str(tmp_path / "state")
    result = invoke("run", str(job), "--state", state, "--detach", "--quiet")
    assert result.exit_code == 0, result.output
    store = open_store(Path(state))
    try:
        (run,) = store.runs()
        assert store.take_run(run.id, "elsewhere:1:abc", 60) is None
        result = invoke("run", str(job), "--state", state, "--quiet")
        assert result.exit_code == 4
        assert "already being run by worker elsewhere:1:abc" in result.output
        store.release_run(run.id, "elsewhere:1:abc")
        result = invoke("run", str(job), "--state", state, "--quiet", "--poll-interval", "0.02")
        assert result.exit_code == 0, result.output
        assert store.lease_of(run.id) is None
    finally:
        store.close()


def test_a_lease_not_renewed_in_time_stops_remote_work(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.create_run(RunRecord("r", "j", "{}", "openai", "/v1/x", "planned", None, utc_now()))
    assert store.claim_run("w", 30) is not None
    stalled = RunLease("r", store=store, worker="w", ttl_s=30).held(time.monotonic() - 25)
    with pytest.raises(LeaseLost, match="lost its lease on run r"):
        stalled.fence()
    stalled.release()  # lost: not given back, its successor's lease stands
    assert store.lease_of("r") is not None
    fresh = RunLease("r", store=store, worker="w", ttl_s=30).held(time.monotonic())
    fresh.fence()
    fresh.release()
    assert store.lease_of("r") is None
    store.close()


def test_limits_are_shown_and_set(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    assert invoke("limits", "--state", state).output.strip() == "no limits set and nothing queued"
    account = "compatible@http://127.0.0.1:9/v1"
    set_queue = ("--account", account, "--model", "gpt-4o-mini", "--queue-tokens", "2000")
    result = invoke("limits", "--state", state, *set_queue, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row == {
        "account": account,
        "model": "gpt-4o-mini",
        "queue_tokens": 2000,
        "rpm": None,
        "tpm": None,
        "queued_tokens": 0,
    }
    invoke(
        "limits", "--state", state, "--account", account, "--model", "gpt-4o-mini", "--rpm", "60"
    )
    shown = invoke("limits", "--state", state).output
    assert f"{account}  gpt-4o-mini  queue 2,000 (held 0)  rpm 60  tpm -" in shown
    for bad in (("--rpm", "-1"), ("--model", "m", "--rpm", "5"), ("--account", account)):
        result = invoke("limits", "--state", state, *bad)
        assert result.exit_code == 2, result.output
    result = invoke("limits", "--store", "mysql://u:secret@h/d", "--state", state)
    assert result.exit_code == 2 and "secret" not in result.output


def _two_jobs_at_once(tmp_path: Path, base_url: str, tag: str) -> list[list[str]]:
    """Two jobs on one model, each allowed the whole queue, run at once; the queue_limit
    events of each (a batch refused for the enqueued-token limit)."""
    jobs = []
    for name in ("first", "second"):
        directory = tmp_path / f"{tag}-{name}"
        directory.mkdir()
        jobs.append(
            cli_job(
                directory,
                base_url,
                rows=20,
                name=f"{tag}-{name}",
                limits={"requests_per_batch": 5, "queue_tokens": QUEUE},
            )
        )
    errors: list[BaseException] = []

    def run(job: Path) -> None:
        try:
            run_job(load_job(job), state_dir=tmp_path / "state", poll_interval=0.02)
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors
    store = open_store(tmp_path / "state")
    try:
        runs = {run.job_name: run for run in store.runs()}
        found = []
        for name in ("first", "second"):
            run = runs[f"{tag}-{name}"]
            assert store.request_counts(run.id)["succeeded"] == 20
            found.append([e["message"] for e in store.events(run.id) if e["kind"] == "queue_limit"])
        return found
    finally:
        store.close()


QUEUE = 140  # every request ~13 tokens, a batch of 5 ~65: two batches fill the queue


@pytest.mark.parametrize("on_postgres", [False, True], ids=["sqlite", "postgresql"])
def test_two_jobs_filling_one_queue_share_the_accounts_limit(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: Any,
    on_postgres: bool,
) -> None:
    if on_postgres:
        monkeypatch.setenv(STORE_ENV, postgres_url(tmp_path))
    server = local_server_factory(
        queue_limits={"gpt-4o-mini": QUEUE}, time_scale=200.0, validation_delay_s=60.0
    )
    alone = _two_jobs_at_once(tmp_path, server.base_url, "alone")
    assert any(alone), "the two jobs never overran the queue together"
    account = f"compatible@{server.base_url}"
    limit = ("--account", account, "--model", "gpt-4o-mini", "--queue-tokens", str(QUEUE))
    assert invoke("limits", "--state", str(tmp_path / "state"), *limit).exit_code == 0
    shared = _two_jobs_at_once(tmp_path, server.base_url, "shared")
    assert shared == [[], []], "a batch was refused for the enqueued-token limit"


def test_real_time_requests_wait_for_the_accounts_shared_rate(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=500)
    state = tmp_path / "state"
    account = ("--account", f"compatible@{server.base_url}", "--model", "gpt-4o-mini")
    assert invoke("limits", "--state", str(state), *account, "--rpm", "2").exit_code == 0
    job = cli_job(tmp_path, server.base_url, rows=5, strategy="realtime")
    done: list[int] = []
    thread = threading.Thread(
        target=lambda: done.append(
            run_job(load_job(job), state_dir=state, poll_interval=0.02).status.done
        )
    )
    thread.start()
    store = open_store(state, {})
    try:

        def answered() -> int:
            runs = store.runs()
            return store.request_counts(runs[0].id)["succeeded"] if runs else 0

        deadline = time.monotonic() + 60
        while answered() < 2:
            assert time.monotonic() < deadline, "the first two requests never went"
            time.sleep(0.02)
        held_until = time.monotonic() + 1.5
        while time.monotonic() < held_until:
            assert answered() == 2, "a third request went past the shared limit of 2 a minute"
            time.sleep(0.05)
        assert invoke("limits", "--state", str(state), *account, "--rpm", "0").exit_code == 0
        thread.join(timeout=60)
        assert done == [5]
    finally:
        store.close()
