"""`batchpilot run --requests FILE` takes the options `run JOB` takes, or refuses them clearly.

Each option is shown honoured where the server can see it (its ledger records batch and
real-time executions apart) or in the store, and refused with exit code 2 where a requests
file cannot honour it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from batchpilot.cli import cli
from batchpilot.run import open_store, run_requests_file
from batchpilot.server import LocalServer

from helpers import client_for

MODEL = "gpt-4o-mini"


def write_requests(path: Path, count: int, words: int = 1, model: str = MODEL) -> Path:
    lines = [
        {
            "custom_id": f"q{i:02d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"question {i} " + "word " * words}],
                "max_tokens": 8,
            },
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run_file(server: LocalServer, requests: Path, state: Path, *extra: str) -> Result:
    args = ["run", "--requests", str(requests), "--provider", "compatible"]
    args += ["--base-url", server.base_url, "--state", str(state), "--quiet"]
    args += ["--poll-interval", "0.02", *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def lanes(server: LocalServer) -> tuple[list[str], list[str]]:
    ledger = server.admin.ledger()
    batch = sorted(row["custom_id"] for row in ledger if row["batch_id"])
    realtime = sorted(row["custom_id"] for row in ledger if not row["batch_id"])
    return batch, realtime


def wait_for_submission(state: Path) -> None:
    """Until the run's first batch is submitted."""
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


def fast(factory: Callable[..., LocalServer], **options: Any) -> LocalServer:
    defaults: dict[str, Any] = {"time_scale": 500, "validation_delay_s": 0}
    return factory(**(defaults | {"finalizing_delay_s": 0} | options))


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


def test_strategy_realtime_runs_every_request_in_real_time(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests = write_requests(tmp_path / "batch.jsonl", 6)
    result = run_file(server, requests, tmp_path / "state", "--strategy", "realtime")
    assert result.exit_code == 0, result.output
    batch, realtime = lanes(server)
    assert batch == [] and realtime == [f"q{i:02d}" for i in range(6)]


def test_strategy_flex_runs_every_request_at_the_flex_tier(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests = write_requests(tmp_path / "batch.jsonl", 4)
    args = ["run", "--requests", str(requests), "--provider", "openai"]
    args += ["--base-url", server.base_url, "--state", str(tmp_path / "state"), "--quiet"]
    args += ["--poll-interval", "0.02", "--strategy", "flex", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ledger = server.admin.ledger()
    assert sorted(row["custom_id"] for row in ledger) == [f"q{i:02d}" for i in range(4)]
    assert {row["service_tier"] for row in ledger} == {"flex"}
    assert not any(row["batch_id"] for row in ledger)


def test_strategy_flex_is_refused_for_a_provider_without_the_tier(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests = write_requests(tmp_path / "batch.jsonl", 2)
    result = run_file(server, requests, tmp_path / "state", "--strategy", "flex")
    assert result.exit_code == 2, result.output
    assert "flex" in result.output
    assert server.admin.ledger() == []


def test_strategy_of_the_python_api_is_checked_before_anything_is_planned(tmp_path: Path) -> None:
    from batchpilot.errors import UserInputError

    requests = write_requests(tmp_path / "batch.jsonl", 2)
    with pytest.raises(UserInputError, match="'sometimes' is not one of batch, realtime"):
        run_requests_file(requests, state_dir=tmp_path / "state", strategy="sometimes")
    assert not (tmp_path / "state").exists()


def test_deadline_moves_late_batches_to_real_time_in_the_same_run(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600, cancel_delay_s=0)
    requests, state = write_requests(tmp_path / "batch.jsonl", 5), tmp_path / "state"
    first = run_file(server, requests, state, "--detach", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["requests"]["submitted"] == 5
    urgent = run_file(
        server, requests, state, "--strategy", "hybrid", "--deadline", "10m", "--json"
    )
    assert urgent.exit_code == 0, urgent.output
    assert json.loads(urgent.output)["run_id"] == json.loads(first.output)["run_id"]
    batch, realtime = lanes(server)
    assert batch == [] and len(realtime) == 5
    assert {b.status for b in client_for(server).batches.list()} == {"cancelled"}


def test_a_bad_deadline_is_refused_before_anything_is_stored(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests, state = write_requests(tmp_path / "batch.jsonl", 2), tmp_path / "state"
    result = run_file(server, requests, state, "--deadline", "soonish")
    assert result.exit_code == 2
    assert "--deadline" in result.output and "soonish" in result.output
    assert not (state / "batchpilot.sqlite3").exists() and server.admin.ledger() == []


def test_fresh_runs_again_what_the_cache_would_answer(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    state = tmp_path / "state"
    requests = write_requests(tmp_path / "batch.jsonl", 3)
    assert run_file(server, requests, state).exit_code == 0
    assert len(server.admin.ledger()) == 3
    copy = shutil.copy(requests, tmp_path / "again.jsonl")
    assert run_file(server, Path(copy), state).exit_code == 0
    assert len(server.admin.ledger()) == 3, "identical requests are answered from the cache"
    other = shutil.copy(requests, tmp_path / "fresh.jsonl")
    assert run_file(server, Path(other), state, "--fresh").exit_code == 0
    assert len(server.admin.ledger()) == 6


def test_cancel_on_exit_cancels_the_remote_batches_at_ctrl_c(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    requests, state = write_requests(tmp_path / "batch.jsonl", 3), tmp_path / "state"

    def press_ctrl_c() -> None:  # once the run (in this, the main thread) has submitted
        wait_for_submission(state)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    result = run_file(server, requests, state, "--cancel-on-exit")
    presser.join(timeout=5)
    assert result.exit_code == 130, result.output
    assert "1 submitted batch cancelled remotely" in result.output, result.output
    assert {b.status for b in client_for(server).batches.list()} <= {"cancelling", "cancelled"}


def test_output_writes_the_results_when_the_run_finishes(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests = write_requests(tmp_path / "batch.jsonl", 4)
    out = tmp_path / "answers.jsonl"
    result = run_file(server, requests, tmp_path / "state", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert f"results written to {out}" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"q{i:02d}" for i in range(4)]
    assert {row["status"] for row in rows} == {"succeeded"}


def test_budget_below_the_worst_case_is_refused(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests, state = write_requests(tmp_path / "batch.jsonl", 3), tmp_path / "state"
    result = run_file(server, requests, state, "--budget", "0.0000001")
    assert result.exit_code != 0 and "budget" in result.output.lower(), result.output
    assert server.admin.ledger() == []


def test_queue_tokens_bound_each_batch(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests = write_requests(tmp_path / "batch.jsonl", 4, words=40)
    result = run_file(server, requests, tmp_path / "state", "--queue-tokens", "70")
    assert result.exit_code == 0, result.output
    assert len(client_for(server).batches.list().data) == 4, "one request per batch"


def test_tier_chooses_the_queue_limit_of_the_tier_table(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    state = tmp_path / "state"
    # gpt-4o's queue holds 90,000 tokens at tier 1 (72,000 usable), 1,350,000 at tier 2
    requests = write_requests(tmp_path / "big.jsonl", 1, words=80_000, model="gpt-4o")
    refused = run_file(server, requests, state)
    assert refused.exit_code == 2 and "72000 tokens a batch may hold" in refused.output
    assert server.admin.ledger() == []
    result = run_file(server, requests, state, "--tier", "2")
    assert result.exit_code == 0, result.output
    assert len(server.admin.ledger()) == 1


def test_tpm_paces_the_real_time_lane(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = fast(local_server_factory)
    requests = write_requests(tmp_path / "batch.jsonl", 2, words=30)
    result = run_file(
        server, requests, tmp_path / "state", "--strategy", "realtime", "--tpm", "10", "--json"
    )
    assert result.exit_code == 7, result.output
    assert server.admin.ledger() == [], "no request fits a 10 tokens-per-minute bucket"
    out = tmp_path / "out.jsonl"
    flags = ["--strategy", "realtime", "--tpm", "10", "--allow-failures", "--output", str(out)]
    accepted = run_file(server, requests, tmp_path / "state2", *flags)
    assert accepted.exit_code == 0, accepted.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("TPM limit" in json.dumps(row) for row in rows), rows


@pytest.mark.parametrize("limit", ["--rpm", "--rpd"])
def test_request_limits_pace_the_real_time_lane(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], limit: str
) -> None:
    server = fast(local_server_factory)
    requests = write_requests(tmp_path / "batch.jsonl", 3)

    ended = threading.Event()

    def press_ctrl_c() -> None:  # once the first answer is in; the limit holds the others
        deadline = time.monotonic() + 120
        while not server.admin.ledger() and time.monotonic() < deadline and not ended.is_set():
            time.sleep(0.05)
        if not ended.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        flags = ["--strategy", "realtime", limit, "1"]
        result = run_file(server, requests, tmp_path / "state", *flags)
    finally:
        ended.set()
    presser.join(timeout=5)
    assert result.exit_code == 130, result.output
    assert len(server.admin.ledger()) == 1, "one request a minute (or a day) lets one through"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--input", "rows.jsonl"], "--input names a job's input"),
        (["--provider", "local"], "--requests runs on openai, azure or compatible"),
    ],
)
def test_options_a_requests_file_cannot_honour_are_refused(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    requests, state = write_requests(tmp_path / "batch.jsonl", 2), tmp_path / "state"
    args = ["run", "--requests", str(requests), "--state", str(state), "--quiet", *flags]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (state / "batchpilot.sqlite3").exists()
