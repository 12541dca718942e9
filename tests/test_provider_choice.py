"""Which provider runs: never the local model in place of another without being asked, and
a local run costs nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import batchpilot
from batchpilot import Task, TaskRequest, TaskResult
from batchpilot.cli import cli
from batchpilot.errors import TaskError, UserInputError
from batchpilot.plan import plan_job
from batchpilot.run import open_store, run_job
from batchpilot.run.defaults import default_provider
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict


class Hello(Task):
    name = "hello"
    model = "gpt-4o-mini"

    def requests(self) -> Iterator[TaskRequest]:
        yield TaskRequest("only", "hello")

    def on_result(self, result: TaskResult) -> None:
        self.state["only"] = result.text


def test_the_provider_named_by_default() -> None:
    key = {"OPENAI_API_KEY": "sk-x"}
    assert default_provider("smollm2", "t", key) == "local"
    assert default_provider("gpt-4o-mini", "t", key) == "openai"
    assert default_provider(None, "t", {}) == "local"
    with pytest.raises(UserInputError, match="OPENAI_API_KEY is not set"):
        default_provider("gpt-4o-mini", "t", {})


def test_a_task_naming_an_openai_model_without_a_key_does_not_run_locally(
    tmp_path: Path,
) -> None:
    with pytest.raises(TaskError, match=r"task hello: model 'gpt-4o-mini' needs a provider.*"):
        Hello(state_dir=tmp_path / "state").run()
    assert not (tmp_path / "state").exists(), "nothing started, nothing stored"


def test_map_naming_an_openai_model_without_a_key_does_not_run_locally(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="provider='local'"):
        batchpilot.map(["x"], prompt="{{ text }}", model="gpt-4o-mini", state_dir=tmp_path)
    assert not (tmp_path / "batchpilot.sqlite3").exists()


def test_a_task_says_which_provider_runs_it(
    tmp_path: Path, local_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", local_server.base_url)
    report = Hello(state_dir=tmp_path, poll_interval=0.02).run()
    assert report.finished and report.provider == "openai"
    store = open_store(tmp_path)
    try:
        events = [e["message"] for e in store.events(report.run_id) if e["kind"] == "provider"]
    finally:
        store.close()
    assert events == ["runs on the openai provider, model gpt-4o-mini"]


def test_a_local_run_costs_nothing_whatever_model_it_names(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"line {i}"}) + "\n" for i in range(3))
    )
    job = job_from_dict(
        {
            "name": "free",
            "provider": {"kind": "local", "responder": "synthetic"},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 20},
            "budget": {"max_usd": 0.0001},
        },
        base_dir=tmp_path,
        environ={},
    )
    planned = plan_job(job)
    assert planned.cost["batch"] == planned.cost["realtime"] == 0
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished and result.status.requests["succeeded"] == 3
    assert result.status.input_tokens > 0 and result.status.spent_usd == 0


def test_run_says_which_provider_answers_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "hi"}\n')
    job = {
        "name": "said",
        "provider": {"kind": "local", "responder": "synthetic"},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    state = str(tmp_path / "state")
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "job.yaml"), "--state", state])
    assert result.exit_code == 0, result.output
    said = "said: gpt-4o-mini on the local provider (the synthetic responder, no key, $0)"
    assert said in result.output
    shown = CliRunner().invoke(cli, ["status", "--state", state, "--json"])
    assert json.loads(shown.output)["spent_usd"] == 0
