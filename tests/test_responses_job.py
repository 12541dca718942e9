"""A job on the Responses API with a JSON schema runs to the finish in both lanes against the
local server, and its output holds every parsed answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from batchpilot.run import run_job
from batchpilot.server import LocalServer, RateLimit
from batchpilot.spec import job_from_dict

MODEL = "gpt-4o-mini"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
    "required": ["label"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("strategy", ["batch", "realtime"])
def test_a_responses_job_with_a_schema_exports_every_parsed_answer(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer], strategy: str
) -> None:
    server = local_server_factory(time_scale=60, rate_limits={MODEL: RateLimit(rpm=6000)})
    rows = [{"id": f"r{i}", "text": f"review number {i}"} for i in range(6)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "label.json").write_text(json.dumps(SCHEMA))
    spec: dict[str, Any] = {
        "name": "responses",
        "provider": {"kind": "compatible", "base_url": server.base_url},
        "model": MODEL,
        "endpoint": "/v1/responses",
        "strategy": strategy,
        "realtime": {"rpm": 6000},
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"system": "Label the review.", "user": "{{ text }}"},
        "params": {"max_output_tokens": 40},
        "response": {"schema": "label.json"},
        "limits": {"requests_per_batch": 3, "queue_tokens": 10**6},
        "output": {"path": "out.jsonl"},
    }
    job = job_from_dict(spec, base_dir=tmp_path)
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [r["id"] for r in rows]
    for record in records:
        assert record["status"] == "succeeded" and record["lane"] == strategy
        jsonschema.validate(record["output"], SCHEMA)
    ledger = server.admin.ledger()
    assert {row["endpoint"] for row in ledger} == {"/v1/responses"}
    assert all(bool(row["batch_id"]) == (strategy == "batch") for row in ledger)
