"""Runs by name: an id, the start of one, or a job's name; the state directory found the way
git finds its own; `ls` with times; --json on the commands that print."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.errors import UserInputError
from batchpilot.run import open_store
from batchpilot.run.lookup import find_state_dir, resolve_run
from batchpilot.server import LocalServer
from batchpilot.store import RunKind, RunRecord


def make_runs(state: Path, *runs: tuple[str, str, str]) -> None:
    store = open_store(state)
    try:
        for run_id, job, created in runs:
            spec = json.dumps({"requests": "batch.jsonl"})
            endpoint = "/v1/chat/completions"
            store.create_run(
                RunRecord(
                    run_id,
                    job,
                    spec,
                    "openai",
                    endpoint,
                    "done",
                    None,
                    created,
                    kind=RunKind.REQUESTS,
                )
            )
    finally:
        store.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / ".batchpilot"
    make_runs(
        directory,
        ("movies-1a2b3c4d", "movies", "2026-01-01T10:00:00+00:00"),
        ("movies-1a9f0000", "movies", "2026-01-02T10:00:00+00:00"),
        ("tweets-77aa0011", "tweets", "2026-01-03T10:00:00+00:00"),
    )
    return directory


def test_a_run_by_id_prefix_or_job_name(state: Path) -> None:
    store = open_store(state)
    try:
        assert resolve_run(store, None).id == "tweets-77aa0011", "the latest"
        assert resolve_run(store, "movies-1a2b3c4d").id == "movies-1a2b3c4d"
        assert resolve_run(store, "movies-1a2").id == "movies-1a2b3c4d"
        assert resolve_run(store, "tweets").id == "tweets-77aa0011"
        assert resolve_run(store, "tw").id == "tweets-77aa0011"
        with pytest.raises(UserInputError) as named:
            resolve_run(store, "movies")
        with pytest.raises(UserInputError) as started:
            resolve_run(store, "movies-1a")
        with pytest.raises(UserInputError, match="neither an id, the start of one, nor"):
            resolve_run(store, "films")
    finally:
        store.close()
    for raised, kind in ((named, "job name"), (started, "id prefix")):
        message = str(raised.value)
        assert f"is the {kind} of 2 runs" in message
        assert "movies-1a2b3c4d" in message and "movies-1a9f0000" in message
        assert "tweets" not in message


def test_the_state_directory_is_found_above_the_current_one(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = state.parent / "a" / "b"
    deep.mkdir(parents=True)
    assert find_state_dir(deep) == state.resolve()
    assert find_state_dir(state.parent.parent / "elsewhere") is None
    monkeypatch.chdir(deep)
    monkeypatch.delenv("BATCHPILOT_STATE", raising=False)
    shown = CliRunner().invoke(cli, ["status", "tweets", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["run_id"] == "tweets-77aa0011"
    ambiguous = CliRunner().invoke(cli, ["status", "movies"])
    assert ambiguous.exit_code == 2 and "movies-1a9f0000" in ambiguous.output


def test_ls_shows_when_runs_were_created_and_updated(state: Path) -> None:
    store = open_store(state)
    try:
        store.event("movies-1a2b3c4d", "note", "touched")
        touched = store.events("movies-1a2b3c4d")[-1]["at_utc"]
    finally:
        store.close()
    listed = CliRunner().invoke(cli, ["ls", "--state", str(state), "--json"])
    assert listed.exit_code == 0, listed.output
    runs = {run["id"]: run for run in json.loads(listed.output)["runs"]}
    assert runs["movies-1a2b3c4d"]["created_at_utc"] == "2026-01-01T10:00:00+00:00"
    assert runs["movies-1a2b3c4d"]["updated_at_utc"] == touched
    assert runs["tweets-77aa0011"]["updated_at_utc"] == "2026-01-03T10:00:00+00:00"
    table = CliRunner().invoke(cli, ["ls", "--state", str(state)]).output
    assert "created (UTC)" in table and "2026-01-01 10:00" in table


def test_resume_export_and_cancel_by_job_name_with_json(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "hi"}\n{"id": "b", "text": "yo"}\n')
    job = {
        "name": "greet",
        "provider": {"kind": "compatible", "base_url": server.base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    state = str(tmp_path / "state")
    fast = ("--state", state, "--poll-interval", "0.02")
    ran = CliRunner().invoke(cli, ["run", str(tmp_path / "job.yaml"), *fast, "--json"])
    assert ran.exit_code == 0, ran.output
    run_id = json.loads(ran.output)["run_id"]
    resumed = CliRunner().invoke(cli, ["resume", "greet", *fast, "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["run_id"] == run_id
    out = tmp_path / "out.jsonl"
    exported = CliRunner().invoke(
        cli, ["export", "greet", "--state", state, "-o", str(out), "--json"]
    )
    assert json.loads(exported.output) == {"run_id": run_id, "rows": 2, "output": str(out)}
    cancelled = CliRunner().invoke(cli, ["cancel", run_id[:8], "--state", state, "--json"])
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.output) == {"run_id": run_id, "cancelled": 0, "batches": []}
    shown = CliRunner().invoke(cli, ["model", "path", "--json"])
    assert shown.exit_code in (0, 6) and (
        shown.exit_code == 6 or "path" in json.loads(shown.output)
    )
