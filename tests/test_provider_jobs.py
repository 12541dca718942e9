"""A job on each provider other than OpenAI runs end to end against the local server's face of
that provider's API, in the batch lane, the real-time lane and both: each request runs once,
answers are parsed against the schema and exported in input order, and the cost comes from the
provider's prices. Planning marks the provider's token counts as estimates."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

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


@dataclass(frozen=True)
class Provider:
    kind: str
    key_env: str
    model: str
    endpoint: str  # as the server's ledger names it
    prices: tuple[float, float]  # input, output USD per 1M tokens, real time
    plan_model: str
    plan_prices: tuple[float, float]


PROVIDERS = [
    # claude-haiku-4-5: $1 / $5; claude-sonnet-4-5: $3 / $15 per 1M tokens
    Provider(
        "anthropic",
        "ANTHROPIC_API_KEY",
        "claude-haiku-4-5",
        "/v1/messages",
        (1.0, 5.0),
        "claude-sonnet-4-5",
        (3.0, 15.0),
    ),
    # gemini-2.5-flash: $0.30 / $2.50; gemini-2.5-pro: $1.25 / $10 per 1M tokens
    Provider(
        "gemini",
        "GEMINI_API_KEY",
        "gemini-2.5-flash",
        "/v1beta/models:generateContent",
        (0.3, 2.5),
        "gemini-2.5-pro",
        (1.25, 10.0),
    ),
]


@pytest.mark.parametrize("strategy", ["batch", "realtime", "hybrid"])
@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.kind)
def test_a_job_runs_in_each_lane(
    provider: Provider,
    strategy: str,
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(provider.key_env, "local-key")
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0, time_scale=100.0)
    rows = [{"id": f"r{i}", "text": f"question {i}"} for i in range(12)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    job = job_from_dict(
        {
            "name": f"{provider.kind}-{strategy}",
            "provider": {"kind": provider.kind, "base_url": server.base_url},
            "model": provider.model,
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
    assert {row["endpoint"] for row in ledger} == {provider.endpoint}
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
    price_in, price_out = provider.prices
    for line in exported:
        share = 0.5 if line["lane"] == "batch" else 1.0  # batches cost half
        usage = line["usage"]
        expected = share * (usage["input_tokens"] * price_in + usage["output_tokens"] * price_out)
        assert line["cost_usd"] == pytest.approx(expected / 1e6)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.kind)
def test_a_job_is_planned_at_the_providers_prices_with_estimated_tokens(
    provider: Provider, tmp_path: Path
) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "r0", "text": "hello there"}) + "\n")
    job = job_from_dict(
        {
            "name": f"{provider.kind}-plan",
            "provider": {"kind": provider.kind},
            "model": provider.plan_model,
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
    price_in, price_out = provider.plan_prices
    expected = 0.5 * (tokens * price_in + 10 * price_out) / 1e6  # batches cost half
    assert planned["cost_usd"]["batch"] == pytest.approx(expected)
