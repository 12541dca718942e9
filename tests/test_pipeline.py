"""Multi-step jobs: later steps see earlier answers; each step resumes on its own.

A step that fails for a row ends that row's pipeline (later steps skip it), and a crash in
step 3 continues step 3 without sending anything of steps 1 and 2 again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchpilot.run import open_store, run_job
from batchpilot.run.identity import step_runs
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict, load_job
from batchpilot.store import SQLiteStore

from helpers import run_command

FAST: dict[str, Any] = {"time_scale": 500.0, "validation_delay_s": 0, "finalizing_delay_s": 0}
QA_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
    "additionalProperties": False,
}


def write_job(tmp_path: Path, base_url: str, rows: int = 6, **changes: Any) -> Path:
    lines = (
        json.dumps({"image_id": f"img{i}", "url": f"https://example.com/{i}.png"})
        for i in range(rows)
    )
    (tmp_path / "images.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "qa.schema.json").write_text(json.dumps(QA_SCHEMA))
    (tmp_path / "checks.py").write_text(
        "def not_img1(answer, row):\n"
        "    return 'img1 is blurred' if row['image_id'] == 'img1' else None\n"
    )
    spec: dict[str, Any] = {
        "name": "captions",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "images.jsonl", "id_field": "image_id"},
        "params": {"max_tokens": 40},
        "limits": {"requests_per_batch": 3, "queue_tokens": 10**6, "max_attempts": 1},
        "steps": [
            {
                "name": "caption",
                "prompt": {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Describe picture {{ image_id }}."},
                                {"type": "image", "image": "{{ url }}"},
                            ],
                        }
                    ]
                },
                "validators": ["checks:not_img1"],
            },
            {
                "name": "qa_1",
                "prompt": {"user": "Caption: {{ steps.caption }}\nAsk and answer a question."},
                "response": {"schema": "qa.schema.json"},
            },
            {
                "name": "qa_2",
                "prompt": {
                    "user": "Caption: {{ steps.caption }}\n"
                    "Q: {{ steps.qa_1.question }} A: {{ steps.qa_1.answer }}\n"
                    "Ask and answer another question."
                },
                "response": {"schema": "qa.schema.json"},
                "response_key": "second",
            },
        ],
        "output": {"path": "out.jsonl"},
    }
    spec.update(changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def executed(server: LocalServer) -> Counter[str]:
    return Counter(row["custom_id"] for row in server.admin.ledger())


def bodies(state: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's request bodies in input order, read through the store (they are kept packed)."""
    store = SQLiteStore(state / "batchpilot.sqlite3")
    try:
        ids = [
            row[0]
            for row in store._db.execute(
                "SELECT id FROM requests WHERE run_id = ? ORDER BY first_row", (run_id,)
            )
        ]
        return [json.loads(store.request_body(run_id, request_id)) for request_id in ids]
    finally:
        store.close()


def test_each_step_sees_the_answers_of_the_steps_before_it(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(**FAST)
    job = load_job(write_job(tmp_path, server.base_url))
    state = tmp_path / "state"
    result = run_job(job, state_dir=state, poll_interval=0.02)
    assert result.status.finished
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"img{i}" for i in range(6)]
    blurred = rows[1]
    assert blurred["status"] == "failed"
    assert blurred["error"] == "step caption: rejected: checks:not_img1: img1 is blurred"
    for row in rows[:1] + rows[2:]:
        assert row["status"] == "succeeded"
        assert isinstance(row["output"]["caption"], str) and row["output"]["caption"]
        assert set(row["output"]["qa_1"]) == {"question", "answer"}
        assert set(row["output"]["second"]) == {"question", "answer"}

    runs = step_runs(job)
    assert [run.job.name for run in runs] == ["captions.caption", "captions.qa_1", "captions.qa_2"]
    second = bodies(state, runs[1].run_id)
    third = bodies(state, runs[2].run_id)
    assert len(second) == len(third) == 5, "the row that failed step 1 goes no further"
    first_answer = rows[0]["output"]
    assert first_answer["caption"] in second[0]["messages"][0]["content"]
    assert first_answer["qa_1"]["question"] in third[0]["messages"][0]["content"]
    assert set(executed(server).values()) == {1}

    before = executed(server)
    again = run_job(job, state_dir=state, poll_interval=0.02)
    assert again.status.finished and executed(server) == before, "a finished pipeline rests"


def test_changing_an_early_step_makes_the_later_steps_new(tmp_path: Path) -> None:
    path = write_job(tmp_path, "http://127.0.0.1:9/v1")
    first = step_runs(load_job(path))
    data = yaml.safe_load(path.read_text())
    data["steps"][0]["prompt"]["messages"][0]["content"][0]["text"] = "Describe it briefly."
    changed = step_runs(job_from_dict(data, base_dir=tmp_path))
    assert all(a.run_id != b.run_id for a, b in zip(first, changed, strict=True))
    data = yaml.safe_load(path.read_text())
    data["steps"][2]["prompt"]["user"] = "Another question, please."
    last_only = step_runs(job_from_dict(data, base_dir=tmp_path))
    assert [a.run_id == b.run_id for a, b in zip(first, last_only, strict=True)] == [
        True,
        True,
        False,
    ]


@pytest.mark.slow
def test_a_crash_in_step_three_does_not_redo_steps_one_and_two(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    # Slow enough that step 3 is caught with batches in flight.
    server = local_server_factory(
        time_scale=4.0, validation_delay_s=1, finalizing_delay_s=1, per_request_s=2
    )
    job_path = write_job(tmp_path, server.base_url, rows=9)
    state = tmp_path / "state"
    runs = step_runs(load_job(job_path))
    log = tmp_path / "first.log"
    with log.open("wb") as errors:
        process = subprocess.Popen(run_command(job_path, state), stderr=errors)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if _in_flight(state, runs[2].run_id):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"step 3 was never caught running: {log.read_text()[-2000:]}")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    sent_before = executed(server)
    first_two = {run.run_id for run in runs[:2]}
    counts_before = _step_request_counts(state, first_two)

    finished = subprocess.run(run_command(job_path, state), capture_output=True, timeout=180)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    assert _step_request_counts(state, first_two) == counts_before
    after = executed(server)
    assert set(after.values()) == {1}, "nothing was sent twice"
    new = set(after) - set(sent_before)
    store = open_store(state)
    try:
        step3_ids = {
            row.request_id
            for row in store.joined_rows(runs[2].run_id)
            if row.request_id is not None
        }
    finally:
        store.close()
    assert new <= step3_ids, "after the crash only step 3 requests were sent"
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 9
    assert sum(row["status"] == "succeeded" for row in rows) == 8


def _in_flight(state: Path, run_id: str) -> bool:
    database = state / "batchpilot.sqlite3"
    if not database.exists():
        return False
    try:
        with sqlite3.connect(database, timeout=1) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM batches WHERE run_id = ? AND state = 'submitted'", (run_id,)
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return bool(row[0])


def _step_request_counts(state: Path, run_ids: set[str]) -> dict[str, int]:
    with sqlite3.connect(state / "batchpilot.sqlite3") as db:
        marks = ",".join("?" * len(run_ids))
        rows = db.execute(
            f"SELECT run_id, SUM(attempts) FROM requests WHERE run_id IN ({marks}) GROUP BY run_id",
            tuple(run_ids),
        ).fetchall()
    return {str(row[0]): int(row[1]) for row in rows}


def test_export_and_resume_from_the_cli_see_the_whole_pipeline(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    from click.testing import CliRunner

    from batchpilot.cli import cli

    server = local_server_factory(**FAST)
    job = load_job(write_job(tmp_path, server.base_url))
    state = tmp_path / "state"
    run_job(job, state_dir=state, poll_interval=0.02)
    written = (tmp_path / "out.jsonl").read_text()
    (tmp_path / "out.jsonl").unlink()
    sent = executed(server)

    exported = CliRunner().invoke(cli, ["export", "--state", str(state)])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out.jsonl").read_text() == written

    shown = CliRunner().invoke(cli, ["status", "--state", str(state), "--json"])
    assert shown.exit_code == 0, shown.output
    steps = json.loads(shown.output)["steps"]
    assert [(s["step"], s["total"], s["finished"]) for s in steps] == [
        ("caption", 6, True),
        ("qa_1", 5, True),
        ("qa_2", 5, True),
    ]

    resumed = CliRunner().invoke(cli, ["resume", "--state", str(state), "--quiet"])
    assert resumed.exit_code == 7, resumed.output  # the row whose caption is rejected
    assert "1 of 16 requests" in resumed.output and "rejected: 1" in resumed.output
    assert "16/16 done" in resumed.output, "6 captions, then 5 of each Q&A step"
    assert executed(server) == sent


def test_mistakes_in_steps_are_clear_errors_naming_the_line(tmp_path: Path) -> None:
    import pytest

    from batchpilot.errors import ConfigError, UserInputError

    path = write_job(tmp_path, "http://127.0.0.1:9/v1")
    data = yaml.safe_load(path.read_text())
    data["steps"][1]["name"] = "caption"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match="step names must be unique; caption repeats"):
        load_job(path)

    data["steps"] = []
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match="steps is empty"):
        load_job(path)

    data = yaml.safe_load(write_job(tmp_path, "http://127.0.0.1:9/v1").read_text())
    data["validators"] = ["checks:not_img1"]
    data["prompt"] = {"user": "hello"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match="with steps, prompt, validators belong in each step"):
        load_job(path)

    path = write_job(tmp_path, "http://127.0.0.1:9/v1")
    (tmp_path / "images.jsonl").write_text(json.dumps({"image_id": "a", "steps": 1}) + "\n")
    with pytest.raises(UserInputError, match="has a field 'steps'"):
        run_job(load_job(path), state_dir=tmp_path / "state")
    store = open_store(tmp_path / "state")
    try:
        assert not store.runs(), "a bad input leaves the store untouched"
    finally:
        store.close()
