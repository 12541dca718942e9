"""`batchpilot compare` runs one job's rows on several providers (here the local server's
Anthropic and Gemini doubles) and writes their answers, statuses and costs side by side."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.server import LocalServer

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["label"],
    "additionalProperties": False,
}
PROVIDERS = ["anthropic:claude-haiku-4-5", "gemini:gemini-2.5-flash"]


def _job(tmp_path: Path, base_url: str | None) -> Path:
    rows = [{"id": f"r{i}", "text": f"question {i}"} for i in range(6)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    provider: dict[str, str] = {"kind": "anthropic"}
    if base_url:
        provider["base_url"] = base_url
    job = {
        "name": "compare",
        "provider": provider,
        "model": "claude-haiku-4-5",
        "strategy": "realtime",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"system": "Answer yes or no.", "user": "{{ text }}"},
        "params": {"max_tokens": 50},
        "response": {"schema": "schema.json"},
        "estimate": {"output_tokens": 10},
        "output": {"path": "out.jsonl"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _flags() -> list[str]:
    return [word for target in PROVIDERS for word in ("--provider", target)]


def test_compare_runs_the_rows_on_each_provider_side_by_side(
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local_server = local_server_factory(
        validation_delay_s=0, finalizing_delay_s=0, time_scale=100.0
    )
    monkeypatch.setenv("ANTHROPIC_API_KEY", "local")
    monkeypatch.setenv("GEMINI_API_KEY", "local")
    job = _job(tmp_path, local_server.base_url)
    command = ["compare", str(job), *_flags(), "--state", str(tmp_path / "state")]
    result = CliRunner().invoke(cli, [*command, "--poll-interval", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert set(summary["cost_usd"]) == set(PROVIDERS)
    assert all(cost > 0 for cost in summary["cost_usd"].values())
    lines = [json.loads(line) for line in (tmp_path / "job.compare.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"r{i}" for i in range(6)]
    for line in lines:
        assert set(line["answers"]) == set(PROVIDERS)
        assert all(answer["label"] in ("yes", "no") for answer in line["answers"].values())
        assert set(line["status"].values()) == {"succeeded"}
        assert all(cost > 0 for cost in line["cost_usd"].values())
    # each provider's run sent each row once, through its own API
    endpoints = Counter(row["endpoint"] for row in local_server.admin.ledger())
    assert endpoints == {"/v1/messages": 6, "/v1beta/models:generateContent": 6}
    for target in PROVIDERS:
        slug = target.replace(":", "-")
        assert (tmp_path / f"job.compare.{slug}.jsonl").exists()


def test_compare_plan_prices_the_job_for_each_provider(tmp_path: Path) -> None:
    job = _job(tmp_path, None)
    result = CliRunner().invoke(cli, ["compare", str(job), *_flags(), "--plan", "--json"])
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)
    assert list(plans) == PROVIDERS
    haiku, flash = (plans[target] for target in PROVIDERS)
    # claude-haiku-4-5: $1 / $5 per 1M tokens; gemini-2.5-flash: $0.30 / $2.50; half in a batch
    assert haiku["cost_usd"]["batch"] == pytest.approx(
        (haiku["input_tokens"] * 0.5 + 60 * 2.5) / 1e6
    )
    assert flash["cost_usd"]["batch"] == pytest.approx(
        (flash["input_tokens"] * 0.15 + 60 * 1.25) / 1e6
    )


def test_compare_needs_two_providers_named_kind_model(tmp_path: Path) -> None:
    job = _job(tmp_path, None)
    one = CliRunner().invoke(cli, ["compare", str(job), "--provider", PROVIDERS[0], "--plan"])
    assert one.exit_code == 2 and "two providers or more" in one.output
    bad = CliRunner().invoke(cli, ["compare", str(job), "--provider", "claude", "--plan"])
    assert bad.exit_code == 2 and "KIND:MODEL" in bad.output


def test_compare_refuses_a_job_with_steps_before_running_anything(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "r0", "text": "hi"}) + "\n")
    job = {
        "name": "steps",
        "provider": {"kind": "anthropic"},
        "model": "claude-haiku-4-5",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "params": {"max_tokens": 10},
        "steps": [
            {"name": "first", "prompt": {"user": "{{ text }}"}},
            {"name": "second", "prompt": {"user": "{{ steps.first }}"}},
        ],
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["compare", str(path), *_flags(), "--state", str(state)])
    assert result.exit_code == 2 and "cannot be compared" in result.output
    assert not state.exists()
