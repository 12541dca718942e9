"""The command line's exit codes: failed requests, and each documented code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from batchpilot import errors
from batchpilot.cli import cli
from batchpilot.server import LocalServer

ROOT = Path(__file__).resolve().parents[1]


def write_job(directory: Path, base_url: str, rows: int, **changes: Any) -> Path:
    data = [{"id": f"r{i}", "text": f"sentence {i}"} for i in range(rows)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    job: dict[str, Any] = {
        "name": "cli-job",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "output": {"path": "out.jsonl"},
        **changes,
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_run_whose_requests_all_failed_exits_7_unless_failures_are_allowed(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job = write_job(tmp_path, server.base_url, rows=3, model="gpt-4o-mnii")
    state = str(tmp_path / "state")
    result = invoke("run", str(job), "--state", state, "--quiet", "--poll-interval", "0.02")
    assert result.exit_code == 7, result.output
    assert "3 of 3 requests of run cli-job-" in result.output
    assert "model_not_found" in result.output and "--allow-failures" in result.output
    again = invoke("resume", "--state", state, "--quiet", "--allow-failures")
    assert again.exit_code == 0, again.output
    assert invoke("resume", "--state", state, "--quiet").exit_code == 7


def test_a_run_whose_requests_succeeded_exits_0(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(time_scale=500, validation_delay_s=0, finalizing_delay_s=0)
    job = write_job(tmp_path, server.base_url, rows=2)
    state = str(tmp_path / "state")
    result = invoke("run", str(job), "--state", state, "--quiet", "--poll-interval", "0.02")
    assert result.exit_code == 0, result.output


def test_plan_suggests_the_model_meant(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "hi"}\n')
    data = {
        "name": "typo",
        "provider": {"kind": "openai"},
        "model": "gpt-4o-mnii",
        "input": {"path": "rows.jsonl"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
    }
    job.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["plan", str(job), "--json"])
    found = json.loads(result.output)
    assert any("did you mean gpt-4o-mini" in f["message"].lower() for f in found["findings"])
    budgeted = CliRunner().invoke(cli, ["plan", str(job), "--budget", "1"])
    assert budgeted.exit_code == 2
    assert "did you mean gpt-4o-mini" in " ".join(budgeted.output.split())


def test_every_exit_code_is_documented() -> None:
    codes = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BatchpilotError)
    }
    page = (ROOT / "docs" / "running.md").read_text()
    table = page[page.index("## Exit codes") :]
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` \|", table, re.MULTILINE)}
    assert codes | {0, 130} <= documented, sorted(codes | {0, 130} - documented)
