"""The library calls behind the run commands: status_of in detail, cancel_run, resume by the kind
the run recorded, export_results; and the kind of runs stored before runs recorded one."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import UserInputError
from batchpilot.run import (
    RunDetail,
    cancel_run,
    export_results,
    open_store,
    resume,
    run_job,
    run_requests_file,
    status_of,
)
from batchpilot.server import LocalServer
from batchpilot.spec import JobSpec, job_from_dict
from batchpilot.store import RunKind
from batchpilot.store.migrations import MIGRATIONS

from helpers import chat_line, client_for

Factory = Callable[..., LocalServer]
FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}


def make_job(directory: Path, base_url: str, rows: int = 6) -> JobSpec:
    data = [{"id": f"r{i}", "text": f"sentence {i}"} for i in range(rows)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    return job_from_dict(
        {
            "name": "library",
            "provider": {"kind": "compatible", "base_url": base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 10},
            "limits": {"requests_per_batch": 3, "queue_tokens": 10**6},
            "output": {"path": "out.jsonl"},
        },
        base_dir=directory,
    )


def test_cancel_run_then_resume_by_the_runs_kind(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(time_scale=1.0, validation_delay_s=3600)
    state = tmp_path / "state"
    started = run_job(make_job(tmp_path, server.base_url), state_dir=state, detach=True)

    detail = status_of(state, detail=True)
    assert isinstance(detail, RunDetail) and detail.status.run_id == started.run_id
    assert [batch.state for batch in detail.batches] == ["submitted", "submitted"]
    assert detail.as_json()["batch_list"][0]["remote_id"] == detail.batches[0].remote_id

    report = cancel_run(state)
    assert (report.run_id, report.cancelled, report.failed) == (started.run_id, 2, False)
    assert status_of(state, started.run_id).status == "cancelled"
    assert {b.status for b in client_for(server).batches.list()} <= {"cancelling", "cancelled"}

    # The run recorded that it is a job's: resume continues it without its job file.
    resumed = resume(state, detach=True, poll_interval=0.02)
    assert resumed.run_id == started.run_id
    assert resumed.status.batches.get("submitted") == 2
    written = export_results(state, all_rows=True, output=tmp_path / "all.csv")
    assert (written.run_id, written.rows) == (started.run_id, 6)
    assert export_results(state).path == tmp_path / "out.jsonl"


def test_resume_refuses_a_requests_files_run_and_says_how(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(**FAST)
    requests = tmp_path / "batch.jsonl"
    lines = [chat_line(f"q{i}", f"question {i}") for i in range(2)]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    state = tmp_path / "state"
    result = run_requests_file(
        requests, state_dir=state, kind="compatible", base_url=server.base_url, poll_interval=0.02
    )
    assert result.status.finished
    store = open_store(state)
    record = store.run(result.run_id)
    store.close()
    assert record is not None and record.kind == RunKind.REQUESTS
    with pytest.raises(UserInputError, match="ran a requests file"):
        resume(state)


def test_runs_stored_before_runs_had_a_kind_are_given_theirs(tmp_path: Path) -> None:
    path = tmp_path / "batchpilot.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:5]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 5")
    specs = {
        "job": {"name": "j", "steps": None, "base_dir": "/"},
        "pipeline": {"name": "p", "steps": [{"name": "a"}], "base_dir": "/"},
        "requests": {"requests": "/tmp/batch.jsonl", "sha256": "0"},
        "task": {"task": "classify", "provider": "openai"},
    }
    for name, spec in specs.items():
        db.execute(
            "INSERT INTO runs(id, job_name, spec_json, provider, endpoint, status, budget_usd, "
            "created_at_utc) VALUES (?, ?, ?, 'openai', 'e', 'planned', NULL, 't')",
            (name, name, json.dumps(spec)),
        )
    db.close()
    store = open_store(tmp_path)
    kinds = {run.id: run.kind for run in store.runs()}
    store.close()
    assert kinds == {name: RunKind(name) for name in specs}
