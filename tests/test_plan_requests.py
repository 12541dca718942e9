"""`batchpilot plan --requests FILE`: the strategies table of a ready batch file, under the
limits given on the command line or the tier table's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.plan import plan_requests_file
from batchpilot.plan.strategies import realtime_seconds
from batchpilot.pricing import tier_limits
from batchpilot.reasoning import is_reasoning_model

TURNAROUND_S = 12 * 3600.0  # estimate.batch_turnaround_hours' default


def write_requests(path: Path, count: int, models: tuple[str, ...] = ("gpt-4o-mini",)) -> Path:
    lines = [
        {
            "custom_id": f"movie-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": models[i % len(models)],
                "messages": [{"role": "user", "content": f"Who dies in film {i}?"}],
                # a reasoning model takes max_completion_tokens only
                (
                    "max_completion_tokens"
                    if is_reasoning_model(models[i % len(models)])
                    else "max_tokens"
                ): 50,
            },
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def plan_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["plan", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan: dict[str, Any] = json.loads(result.output)
    return plan


def test_strategies_of_a_requests_file_under_the_tier_table(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "movies.jsonl", 1200)
    plan = plan_json("--requests", str(requests))
    strategies = plan["strategies"]
    assert set(strategies) == {"batch", "realtime", "hybrid"}
    tier = tier_limits("gpt-4o-mini", 1)
    per_request = (plan["input_tokens"] + plan["output_tokens"]["expected"]) / 1200
    expected = realtime_seconds(1200, per_request, tier.rpm, tier.tpm, tier.rpd)
    assert strategies["realtime"]["makespan_s"] == round(expected, 1)
    assert strategies["realtime"]["realtime_requests"] == 1200
    assert strategies["realtime"]["cost_usd"] == round(plan["cost_usd"]["realtime"], 6)
    assert strategies["batch"] == {
        "makespan_s": TURNAROUND_S,
        "cost_usd": round(plan["cost_usd"]["batch"], 6),
        "realtime_requests": 0,
        "tier": "standard",
    }
    hybrid = strategies["hybrid"]
    assert hybrid["makespan_s"] <= min(s["makespan_s"] for s in strategies.values())


def test_a_requests_file_of_a_flex_model_shows_flex_at_batch_prices(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "movies.jsonl", 300, models=("gpt-5-mini",))
    strategies = plan_json("--requests", str(requests))["strategies"]
    assert set(strategies) == {"batch", "realtime", "flex", "hybrid"}
    assert strategies["flex"]["cost_usd"] == strategies["batch"]["cost_usd"]
    assert strategies["flex"]["cost_usd"] < strategies["realtime"]["cost_usd"]
    assert strategies["flex"]["makespan_s"] < strategies["batch"]["makespan_s"]


def test_limits_on_the_command_line_replace_the_tier_table(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "movies.jsonl", 1200)
    plan = plan_json("--requests", str(requests), "--rpm", "1", "--queue-tokens", "10000")
    strategies = plan["strategies"]
    assert strategies["realtime"]["makespan_s"] == 1200 * 60.0  # one request a minute
    waves = math.ceil(plan["input_tokens"] / 8000)  # 80% of the queue per wave
    assert waves > 1 and strategies["batch"]["makespan_s"] == waves * TURNAROUND_S
    hybrid = strategies["hybrid"]
    assert 0 < hybrid["realtime_requests"] < 1200
    fastest = min(strategies["batch"]["makespan_s"], strategies["realtime"]["makespan_s"])
    assert hybrid["makespan_s"] < fastest


def test_text_plan_shows_the_strategies(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "movies.jsonl", 30)
    result = CliRunner().invoke(cli, ["plan", "--requests", str(requests), "--rpm", "3"])
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("strategy") :]
    rows = {line.split()[0]: line for line in table.splitlines()[1:4]}
    assert set(rows) == {"batch", "realtime", "hybrid"}
    assert "12.0 h" in rows["batch"] and "10 min" in rows["realtime"], table


def test_several_models_are_estimated_under_the_main_ones_limits(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "mixed.jsonl", 9, ("gpt-4o", "gpt-4o", "gpt-4o-mini"))
    plan = plan_requests_file(requests)
    assert set(plan.strategies) == {"batch", "realtime", "hybrid"}
    assert any("limits of gpt-4o, the model most lines name (6 of 9" in a for a in plan.assumptions)


def test_input_is_refused_for_a_requests_file(tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "movies.jsonl", 2)
    result = CliRunner().invoke(cli, ["plan", "--requests", str(requests), "--input", "x.csv"])
    assert result.exit_code == 2 and "--input names a job's input" in result.output


def test_the_worst_case_note_appears_only_when_a_line_has_no_max_tokens(tmp_path: Path) -> None:
    capped = plan_requests_file(write_requests(tmp_path / "capped.jsonl", 3))
    assert not any("no max_tokens" in note for note in capped.assumptions), capped.assumptions
    path = write_requests(tmp_path / "open.jsonl", 3)
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1])
    del last["body"]["max_tokens"]
    path.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    uncapped = plan_requests_file(path)
    assert any("no max_tokens is set" in note for note in uncapped.assumptions)


def test_limit_flags_override_a_jobs_limits(tmp_path: Path) -> None:
    job = Path(__file__).resolve().parents[1] / "examples" / "plan" / "job.yaml"
    plan = plan_json(str(job), "--rpm", "1")
    assert plan["strategies"]["realtime"]["makespan_s"] == plan["requests"] * 60.0
    tiered = plan_json(str(job), "--tier", "2")
    tier = tier_limits("gpt-4o-mini", 2)
    per_request = (tiered["input_tokens"] + tiered["output_tokens"]["expected"]) / plan["requests"]
    expected = realtime_seconds(plan["requests"], per_request, tier.rpm, tier.tpm, tier.rpd)
    assert tiered["strategies"]["realtime"]["makespan_s"] == round(expected, 1)
    assert expected != realtime_seconds(plan["requests"], per_request, 500, 200_000, 10_000)
