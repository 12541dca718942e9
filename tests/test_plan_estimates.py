"""Where input tokens are an estimate (Claude and Gemini bodies are counted with an OpenAI
encoding), the worst case counts them ESTIMATE_MARGIN higher, so budgets hold; exact counts are
priced as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchpilot.plan.job import plan_job
from batchpilot.spec import job_from_dict

# model -> (input, output) USD per 1M tokens at the real-time price
PRICES = {
    "claude-haiku-4-5": (1.0, 5.0),
    "gemini-2.5-flash": (0.30, 2.50),
    "gpt-4o-mini": (0.15, 0.60),
}


def _plan(tmp_path: Path, kind: str, model: str) -> dict[str, object]:
    rows = [{"id": f"r{i}", "text": "a sentence to count " * (i + 1)} for i in range(3)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    job = job_from_dict(
        {
            "name": f"estimates-{kind}",
            "provider": {"kind": kind},
            "model": model,
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 20},
            "estimate": {"output_tokens": 20},
        },
        base_dir=tmp_path,
    )
    return plan_job(job).as_json()


@pytest.mark.parametrize(
    ("kind", "model"), [("anthropic", "claude-haiku-4-5"), ("gemini", "gemini-2.5-flash")]
)
def test_estimated_input_tokens_get_a_margin_in_the_worst_case(
    kind: str, model: str, tmp_path: Path
) -> None:
    planned = _plan(tmp_path, kind, model)
    assert planned["input_tokens_exact"] is False
    per_in, per_out = PRICES[model]
    tokens = int(planned["input_tokens"])  # type: ignore[call-overload]
    cost = planned["cost_usd"]
    assert isinstance(cost, dict)
    # the input the worst case prices: each request's count 30% higher, rounded up
    worst_in = (cost["realtime_worst"] * 1e6 - 3 * 20 * per_out) / per_in
    assert tokens * 1.3 - 1e-6 <= worst_in <= tokens * 1.3 + 3
    assert cost["batch_worst"] == pytest.approx(cost["realtime_worst"] / 2)
    # the expected cost stays at the counted tokens
    assert cost["realtime"] == pytest.approx((tokens * per_in + 3 * 20 * per_out) / 1e6)
    assumptions = planned["assumptions"]
    assert isinstance(assumptions, list)
    assert any("estimates" in line and model in line for line in assumptions)


def test_exact_input_tokens_get_no_margin(tmp_path: Path) -> None:
    planned = _plan(tmp_path, "openai", "gpt-4o-mini")
    assert planned["input_tokens_exact"] is True
    per_in, per_out = PRICES["gpt-4o-mini"]
    cost = planned["cost_usd"]
    assert isinstance(cost, dict)
    tokens = int(planned["input_tokens"])  # type: ignore[call-overload]
    assert cost["realtime_worst"] == pytest.approx((tokens * per_in + 3 * 20 * per_out) / 1e6)
    assumptions = planned["assumptions"]
    assert isinstance(assumptions, list)
    assert not any("estimates" in line for line in assumptions)
