"""Gemini beyond what every provider's job does (`test_provider_jobs.py`): the demo on the
Gemini double, Gemini's usage priced, and the SDK imported only when needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.server import LocalServer


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
