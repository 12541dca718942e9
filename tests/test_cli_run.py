"""The run commands end to end: run, status, ls, export, resume, cancel, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.run import open_store
from batchpilot.server import LocalServer

from helpers import client_for, run_command, sql


def write_job(directory: Path, base_url: str, rows: int = 12, **changes: Any) -> Path:
    data = [{"id": f"r{i}", "text": f"sentence {i}"} for i in range(rows)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    job: dict[str, Any] = {
        "name": "cli-job",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "limits": {"requests_per_batch": 5, "queue_tokens": 10**6},
        "output": {"path": "out.jsonl"},
    }
    job.update(changes)
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def test_run_status_ls_export_resume(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job, state = write_job(tmp_path, server.base_url), str(tmp_path / "state")
    result = invoke("run", str(job), "--state", state, "--quiet", "--poll-interval", "0.02")
    assert result.exit_code == 0, result.output
    assert "results written to" in result.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in out] == [f"r{i}" for i in range(12)]
    assert {row["status"] for row in out} == {"succeeded"}

    status = json.loads(invoke("status", "--state", state, "--json").output)
    assert status["finished"] and status["requests"]["succeeded"] == 12
    assert len(status["batch_list"]) == 3
    assert "cli-job" in invoke("ls", "--state", state).output

    csv_path = tmp_path / "out.csv"
    exported = invoke("export", "--state", state, "-o", str(csv_path))
    assert exported.exit_code == 0 and "wrote 12 rows" in exported.output
    assert csv_path.read_text().splitlines()[0].startswith("id,")

    executed = len(server.admin.ledger())
    assert invoke("resume", "--state", state, "--quiet").exit_code == 0
    assert invoke("run", str(job), "--state", state, "--quiet").exit_code == 0
    assert len(server.admin.ledger()) == executed == 12


def test_ls_remote_shows_batches_no_run_knows(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job, state = write_job(tmp_path, server.base_url, rows=3), str(tmp_path / "state")
    assert (
        invoke("run", str(job), "--state", state, "--quiet", "--poll-interval", "0.02").exit_code
        == 0
    )
    client = client_for(server)
    stray = client.files.create(file=("x.jsonl", b""), purpose="batch")
    client.batches.create(
        input_file_id=stray.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"batchpilot_run": "ghost-run"},
    )
    listing = invoke("ls", "--state", state, "--remote").output
    assert "ghost-run (not in this store)" in listing
    assert "cli-job-" in listing


def test_run_a_requests_file(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], monkeypatch: Any
) -> None:
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    lines = [
        {
            "custom_id": f"theirs-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(4)
    ]
    requests = tmp_path / "batch.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    state = str(tmp_path / "state")
    result = invoke(
        "run",
        "--requests",
        str(requests),
        "--base-url",
        server.base_url,
        "--model",
        "gpt-4o-mini",
        "--state",
        state,
        "--quiet",
        "--poll-interval",
        "0.02",
    )
    assert result.exit_code == 0, result.output
    assert {row["model"] for row in server.admin.ledger()} == {"gpt-4o-mini"}
    out = tmp_path / "results.jsonl"
    assert invoke("export", "--state", state, "-o", str(out)).exit_code == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == [f"theirs-{i}" for i in range(4)]


def test_bad_job_is_a_clear_error_and_sends_nothing(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory()
    job = write_job(tmp_path, server.base_url, prompt={"user": "{{ missing_field }}"})
    result = CliRunner().invoke(cli, ["run", str(job), "--state", str(tmp_path / "s"), "-q"])
    assert result.exit_code == 2
    assert "missing_field" in result.output and "Traceback" not in result.output
    assert server.admin.ledger() == []
    store = open_store(tmp_path / "s")
    assert store.runs() == []
    store.close()


def start_run(job: Path, state: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = run_command(job, state, *extra)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_submission(state: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (state / "batchpilot.sqlite3").exists():
            store = open_store(state)
            try:
                runs = store.runs()
                if runs and store.batches(runs[0].id, ["submitted"]):
                    return
            finally:
                store.close()
        time.sleep(0.1)
    raise AssertionError("no batch was submitted")


def test_ctrl_c_leaves_batches_running_and_says_how_to_resume(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    job, state = write_job(tmp_path, server.base_url, rows=4), tmp_path / "state"
    process = start_run(job, state)
    wait_for_submission(state)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130
    assert b"batchpilot resume" in output
    assert b"stopped; 1 submitted batch keeps running remotely" in output, output
    said = b"Ctrl-C: stopping after the current step; 1 submitted batch keeps running remotely; "
    assert said + b"press Ctrl-C again to cancel them." in output, output
    statuses = {b.status for b in client_for(server).batches.list()}
    assert statuses == {"validating"}


@pytest.mark.slow
def test_second_ctrl_c_cancels_remote_batches(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    job, state = write_job(tmp_path, server.base_url, rows=4), tmp_path / "state"
    process = start_run(job, state, "--cancel-on-exit")
    wait_for_submission(state)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    statuses = {b.status for b in client_for(server).batches.list()}
    assert statuses <= {"cancelling", "cancelled"}
    assert process.returncode == 130
    assert b"1 submitted batch cancelled remotely" in output, output
    assert b"; 1 submitted batch will be cancelled remotely (what they answered is kept)" in output
    assert b"running remotely" not in output


@pytest.mark.slow
def test_ctrl_c_after_real_time_answers_mentions_no_remote_batches(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0)
    job = write_job(tmp_path, server.base_url, rows=6, strategy="realtime", realtime={"rpm": 2})
    state = tmp_path / "state"
    process = start_run(job, state)
    deadline = time.monotonic() + 90
    while not server.admin.ledger():
        assert time.monotonic() < deadline, "the real-time lane answered nothing"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert b"batchpilot resume" in output
    assert b"stopped; nothing is left running remotely" in output, output

    # resume stops the same way, and says so
    command = [sys.executable, "-m", "batchpilot", "resume", "--state", str(state), "--quiet"]
    answered = len(server.admin.ledger())
    resumed = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while len(server.admin.ledger()) == answered:
        assert time.monotonic() < deadline + 30, "the resumed run answered nothing"
        time.sleep(0.05)
    resumed.send_signal(signal.SIGINT)
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 130, output
    assert b"stopped; nothing is left running remotely" in output, output


def test_ctrl_c_stops_the_real_time_lane_at_once_with_nothing_in_flight(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    # 2 RPM: two real-time answers at once, then the lane waits 30 s for the next one while
    # the first batches stay in the queue for an hour; Ctrl-C must not wait for either
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    job = write_job(
        tmp_path,
        server.base_url,
        rows=20,
        strategy="hybrid",
        realtime={"rpm": 2},
        estimate={"batch_turnaround_hours": 0.05},
        limits={"requests_per_batch": 5, "queue_tokens": 60},
    )
    state = tmp_path / "state"
    process = start_run(job, state)
    wait_for_submission(state)
    deadline = time.monotonic() + 90
    while sum(1 for row in server.admin.ledger() if not row["batch_id"]) < 2:
        assert time.monotonic() < deadline, "the real-time lane answered nothing"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert time.monotonic() - started < 10, "the lane's wait for its rate limit held Ctrl-C"
    store = open_store(state)
    (run,) = store.runs()
    counts = store.request_counts(run.id)
    ((unsent,),) = sql(
        state / "batchpilot.sqlite3",
        "SELECT COUNT(*) FROM requests WHERE run_id = ? AND state = 'pending' AND attempts > 0",
        run.id,
    )
    store.close()
    assert counts["realtime"] == 0 and counts["succeeded"] == 2
    assert counts["submitted"] > 0 and counts["pending"] > 0
    assert unsent == 0, "a request the lane never sent was charged an attempt"
    assert len(server.admin.ledger()) == 2
