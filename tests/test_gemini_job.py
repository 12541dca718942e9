"""A job with `provider.kind: gemini` runs end to end against the local server's Gemini API, in
the batch lane, the real-time lane and both: each request runs once, answers are parsed against
the schema and exported in input order, and the cost comes from Gemini's prices."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.plan.job import plan_job
from batchpilot.run import run_job
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["label"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("strategy", ["batch", "realtime", "hybrid"])
def test_a_gemini_job_runs_in_each_lane(
    strategy: str,
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-local")
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0, time_scale=100.0)
    rows = [{"id": f"r{i}", "text": f"question {i}"} for i in range(12)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    job = job_from_dict(
        {
            "name": f"gemini-{strategy}",
            "provider": {"kind": "gemini", "base_url": server.base_url},
            "model": "gemini-2.5-flash",
            "strategy": strategy,
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"system": "Answer yes or no.", "user": "{{ text }}"},
            "params": {"max_tokens": 50},
            "response": {"schema": "schema.json"},
            "limits": {"requests_per_batch": 5},
            "output": {"path": "out.jsonl"},
        },
        base_dir=tmp_path,
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished and result.status.requests["succeeded"] == 12
    ledger = server.admin.ledger()
    assert {row["endpoint"] for row in ledger} == {"/v1beta/models:generateContent"}
    runs = Counter(str(row["custom_id"]) for row in ledger)
    assert len(runs) == 12 and set(runs.values()) == {1}
    if strategy != "hybrid":
        assert (ledger[0]["batch_id"] is not None) == (strategy == "batch")
    assert result.output is not None
    exported = [json.loads(line) for line in result.output.read_text().splitlines()]
    assert [line["id"] for line in exported] == [row["id"] for row in rows]
    assert all(line["output"]["label"] in ("yes", "no") for line in exported)
    lanes = {line["lane"] for line in exported}
    assert lanes == {strategy} if strategy != "hybrid" else lanes <= {"batch", "realtime"}
    # gemini-2.5-flash: $0.30 / $2.50 per 1M tokens, half that in a batch
    for line in exported:
        share = 0.5 if line["lane"] == "batch" else 1.0
        usage = line["usage"]
        expected = share * (usage["input_tokens"] * 0.3 + usage["output_tokens"] * 2.5) / 1e6
        assert line["cost_usd"] == pytest.approx(expected)


def test_a_gemini_job_is_planned_at_geminis_prices_with_estimated_tokens(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "r0", "text": "hello there"}) + "\n")
    job = job_from_dict(
        {
            "name": "gemini-plan",
            "provider": {"kind": "gemini"},
            "model": "gemini-2.5-pro",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 10},
            "estimate": {"output_tokens": 10},
        },
        base_dir=tmp_path,
    )
    planned = plan_job(job).as_json()
    assert planned["input_tokens_exact"] is False
    tokens = planned["input_tokens"]
    # gemini-2.5-pro: $1.25 / $10 per 1M tokens, half that in a batch
    assert planned["cost_usd"]["batch"] == pytest.approx((tokens * 0.625 + 10 * 5.0) / 1e6)


def test_the_demo_runs_on_the_gemini_double_with_one_flag(
    tmp_path: Path, local_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = tmp_path / "demo"
    shutil.copytree(Path(__file__).parent.parent / "examples" / "demo", demo)
    monkeypatch.setenv("GEMINI_API_KEY", "local")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", local_server.base_url)
    command = ["run", str(demo / "job.yaml"), "--state", str(tmp_path / "state"), "--quiet"]
    command += ["--poll-interval", "0.05"]
    result = CliRunner().invoke(cli, [*command, "--provider", "gemini"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (demo / "results.jsonl").read_text().splitlines()]
    plots = [json.loads(line)["id"] for line in (demo / "plots.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == plots
    assert all(row["status"] == "succeeded" for row in rows)
    assert {e["endpoint"] for e in local_server.admin.ledger()} == {
        "/v1beta/models:generateContent"
    }


def test_gemini_usage_is_priced_with_cached_and_thinking_tokens() -> None:
    from batchpilot.pricing import PriceTable, tier_limits, usage_cost
    from batchpilot.providers.gemini_shapes import chat_completion

    response = {
        "candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 600,
            "candidatesTokenCount": 50,
            "thoughtsTokenCount": 150,
        },
    }
    body = chat_completion(response, "gemini-2.5-flash")
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 600
    prompt, output, usd = usage_cost(PriceTable.load(), "gemini-2.5-flash", body, batch=True)
    # gemini-2.5-flash: $0.30 input, $0.03 cached, $2.50 output per 1M tokens; batch halves them
    assert (prompt, output) == (1000, 200)
    assert usd == pytest.approx(0.5 * (400 * 0.30 + 600 * 0.03 + 200 * 2.50) / 1e6)
    limits = tier_limits("gemini-2.5-flash", 1)
    assert limits.rpm == 1000 and limits.batch_queue_tokens == 3_000_000


def test_the_sdk_is_imported_only_by_a_gemini_provider() -> None:
    code = (
        "import sys; import batchpilot.providers, batchpilot.run, batchpilot.lanes.batch; "
        "print('google.genai' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert done.stdout.decode().strip() == "False"
