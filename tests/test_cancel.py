"""`batchpilot cancel`: every live batch is cancelled, whatever each one answers, under the run's
lock; each batch is reported."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.providers import OpenAIProvider
from batchpilot.run import RunStatus, open_store, run_job
from batchpilot.run.workspace import run_lock
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import load_job

from helpers import LoseAnswers, client_for

Factory = Callable[..., LocalServer]


def write_job(directory: Path, base_url: str, rows: int = 15) -> Path:
    data = [{"id": f"r{i}", "text": f"sentence {i}"} for i in range(rows)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    job: dict[str, Any] = {
        "name": "cancel-job",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "limits": {"requests_per_batch": 5, "queue_tokens": 10**6},
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def detached_run(tmp_path: Path, server: LocalServer) -> tuple[str, str]:
    state = str(tmp_path / "state")
    job = write_job(tmp_path, server.base_url)
    args = ("run", str(job), "--state", state, "--detach", "-q", "--poll-interval", "0.02")
    assert invoke(*args).exit_code == 0
    store = open_store(Path(state))
    run_id = store.runs()[0].id
    store.close()
    return state, run_id


def test_cancel_goes_on_past_a_batch_that_has_ended(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    # the first batch completes; the two others stall in finalizing, where they can be cancelled
    stall = {"kind": "finalizing_stall", "nth": [2, 3], "seconds": 10**6}
    server = local_server_factory(
        faults=FaultPlan.model_validate({"seed": 7, "faults": [stall]}),
        time_scale=500.0,
        validation_delay_s=0,
        finalizing_delay_s=0,
    )
    state, run_id = detached_run(tmp_path, server)
    client = client_for(server)
    until = time.monotonic() + 30
    while {b.status for b in client.batches.list()} != {"completed", "finalizing"}:
        assert time.monotonic() < until, [b.status for b in client.batches.list()]
        time.sleep(0.05)
    result = invoke("cancel", run_id, "--state", state)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("batch 1 (") and "not cancelled" in lines[0]
    assert "Cannot cancel a batch with status 'completed'" in lines[0]
    assert [line.split(" ", 3)[-1] for line in lines[1:3]] == ["cancelled: on request"] * 2
    assert lines[3] == f"cancelled 2 of 3 live batches of {run_id}"
    statuses = [b.status for b in client.batches.list()]
    assert statuses.count("completed") == 1
    assert set(statuses) - {"completed"} <= {"cancelling", "cancelled"}
    # the completed batch's answers are kept: resume ingests it and the cancelled ones
    assert invoke("resume", run_id, "--state", state, "-q").exit_code == 0
    store = open_store(Path(state))
    counts = store.request_counts(run_id)
    store.close()
    assert counts["succeeded"] >= 5


def test_cancel_waits_for_no_one_and_touches_nothing_while_a_run_holds_the_lock(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    state, run_id = detached_run(tmp_path, server)
    with run_lock(Path(state), run_id):
        result = CliRunner().invoke(cli, ["cancel", run_id, "--state", state])
    assert result.exit_code == 4, result.output  # as for a second `batchpilot run`
    assert "already being run" in result.output and "Ctrl-C twice" in result.output
    assert {b.status for b in client_for(server).batches.list()} == {"validating"}
    store = open_store(Path(state))
    status = store.run(run_id)
    store.close()
    assert status is not None and status.status != "cancelled"


def test_cancel_finds_a_batch_whose_creation_answer_was_lost(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    job_file = write_job(tmp_path, server.base_url, rows=5)
    state = tmp_path / "state"

    def stop(status: RunStatus) -> None:
        if status.batches.get("creating"):
            raise KeyboardInterrupt

    http = httpx2.Client(transport=LoseAnswers("/batches"))
    url = server.base_url
    with (
        openai.OpenAI(base_url=url, api_key="x", max_retries=0, http_client=http) as sdk,
        pytest.raises(KeyboardInterrupt),
    ):
        run_job(
            load_job(job_file),
            state_dir=state,
            poll_interval=0.02,
            provider=OpenAIProvider(sdk),
            on_progress=stop,
        )
    client = client_for(server)
    assert [b.status for b in client.batches.list()] == ["validating"]
    result = invoke("cancel", "--state", str(state))
    assert result.exit_code == 0, result.output
    assert "cancelled 1 of 1 live batches" in result.output
    assert {b.status for b in client.batches.list()} <= {"cancelling", "cancelled"}
