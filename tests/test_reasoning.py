"""Reasoning models (the o-series, the gpt-5 family): their parameters, their reasoning tokens in
usage, in cost and in the worst case; and cached input tokens at the cached rate in both lanes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from batchpilot.errors import UserInputError
from batchpilot.plan import plan_job
from batchpilot.plan.job import plan_requests_file
from batchpilot.plan.planner import PlannedRequest, PlanResult
from batchpilot.pricing import PriceTable
from batchpilot.reasoning import is_reasoning_model
from batchpilot.run import open_store, run_job
from batchpilot.server import LocalServer
from batchpilot.spec import job_from_dict

from helpers import client_for

ServerFactory = Callable[..., LocalServer]
URL = "http://127.0.0.1:9/v1"


class Bodies:
    """A plan sink that keeps the planned bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def add(self, planned: PlannedRequest) -> None:
        if planned.new:
            self.bodies.append(json.loads(planned.body))

    def close(self, result: PlanResult) -> None:
        return None


def job(tmp_path: Path, rows: int = 3, **changes: Any) -> Any:
    data = "".join(json.dumps({"id": f"r{i}", "text": f"riddle {i}"}) + "\n" for i in range(rows))
    (tmp_path / "rows.jsonl").write_text(data)
    spec: dict[str, Any] = {
        "name": "reasoning",
        "provider": {"kind": "compatible", "base_url": URL},
        "model": "o4-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 300, "temperature": 0.2, "reasoning_effort": "high"},
        "limits": {"queue_tokens": 10**6},
        **changes,
    }
    return job_from_dict(spec, base_dir=tmp_path)


def test_reasoning_models_are_known_by_table_and_name() -> None:
    prices = PriceTable.load()
    for model in ("o3", "o4-mini", "gpt-5", "gpt-5-mini", "o3-2025-04-16", "gpt-5.1"):
        assert is_reasoning_model(model, prices), model
    for model in ("gpt-4o-mini", "gpt-4.1", "text-embedding-3-small", "gpt-5-chat-latest"):
        assert not is_reasoning_model(model, prices), model


def test_a_jobs_requests_are_fitted_to_a_reasoning_model_with_warnings(tmp_path: Path) -> None:
    sink = Bodies()
    result = plan_job(job(tmp_path), sink=sink)
    assert result.findings.errors == 0
    for body in sink.bodies:
        assert body["max_completion_tokens"] == 300 and body["reasoning_effort"] == "high"
        assert "max_tokens" not in body and "temperature" not in body
    notes = [f["message"] for f in result.findings.as_list() if f["code"] == "reasoning_model"]
    assert len(notes) == 2  # once per model, not once per request
    assert "max_completion_tokens" in notes[0] and "temperature dropped" in notes[1]
    # the cap counts reasoning tokens: the worst case is three answers of 300 tokens
    assert result.worst_output_tokens == 3 * 300


def test_the_responses_api_takes_reasoning_effort_as_reasoning_effort_object(
    tmp_path: Path,
) -> None:
    sink = Bodies()
    changes = {"endpoint": "/v1/responses", "params": {"reasoning_effort": "low"}}
    plan_job(job(tmp_path, **changes), sink=sink)
    assert {json.dumps(body["reasoning"]) for body in sink.bodies} == {'{"effort": "low"}'}
    assert not any("reasoning_effort" in body for body in sink.bodies)


def test_what_a_reasoning_model_refuses_is_an_error_in_a_requests_file(tmp_path: Path) -> None:
    lines = [
        {"model": "o3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9},
        {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.5},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "x"}],
            "reasoning_effort": "low",
        },
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
            )
            + "\n"
            for i, b in enumerate(lines)
        )
    )
    result = plan_requests_file(path)
    errors = [f["message"] for f in result.findings.as_list() if f["level"] == "error"]
    assert len(errors) == 3
    assert "takes max_completion_tokens" in errors[0] and "refuses top_p" in errors[1]
    assert "reasoning_effort is for reasoning models" in errors[2]


def test_an_unknown_reasoning_effort_is_refused_before_planning(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="reasoning_effort must be one of"):
        job(tmp_path, params={"reasoning_effort": "extreme"})


def test_reasoning_tokens_are_in_usage_and_in_the_cost_in_both_lanes(
    tmp_path: Path, local_server_factory: ServerFactory
) -> None:
    server = local_server_factory(time_scale=600)
    prices = PriceTable.load()
    for strategy in ("realtime", "batch"):
        where = tmp_path / strategy
        where.mkdir()
        spec = job(
            where,
            strategy=strategy,
            provider={"kind": "compatible", "base_url": server.base_url},
            output={"path": "out.jsonl"},
            params={"max_tokens": 2000, "reasoning_effort": "high"},
        )
        result = run_job(spec, state_dir=where / "state", poll_interval=0.02)
        assert result.status.finished and result.status.requests["succeeded"] == 3
        answers = answered(where / "state", result.run_id, "output_tokens", "cost_usd")
        for text, output_tokens, cost in answers:
            usage = json.loads(text)["usage"]
            assert usage["completion_tokens_details"]["reasoning_tokens"] == 512
            assert output_tokens == usage["completion_tokens"] > 512
            batch = strategy == "batch"
            expected = prices.cost(
                "o4-mini",
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
                batch=batch,
            )
            assert cost == pytest.approx(expected)
        store = open_store(where / "state")
        try:
            spent, _ = store.money(result.run_id)
        finally:
            store.close()
        assert spent == pytest.approx(sum(row[2] for row in answers))


def answered(state: Path, run_id: str, *fields: str) -> list[tuple[Any, ...]]:
    """Each answer of a run with `fields` of its row, as the store gives them."""
    store = open_store(state)
    try:
        rows = [row for row in store.joined_rows(run_id) if row.response_json]
    finally:
        store.close()
    return [(row.response_json, *(getattr(row, name) for name in fields)) for row in rows]


def test_reasoning_tokens_stay_within_max_completion_tokens(
    local_server_factory: ServerFactory,
) -> None:
    client = client_for(local_server_factory())
    answer = client.chat.completions.create(
        model="o3",
        messages=[{"role": "user", "content": "a long story please"}],
        max_completion_tokens=40,
        reasoning_effort="medium",
    )
    assert answer.usage is not None and answer.usage.completion_tokens_details is not None
    assert answer.usage.completion_tokens_details.reasoning_tokens == 40
    assert answer.usage.completion_tokens == 40
    assert answer.choices[0].finish_reason == "length"
    reply = client.responses.create(model="o3", input="hi", reasoning={"effort": "low"})
    assert reply.usage is not None and reply.usage.output_tokens_details.reasoning_tokens == 32
    assert reply.reasoning is not None and reply.reasoning.effort == "low"


def test_a_shared_long_prompt_is_cached_and_billed_at_the_cached_rate_in_every_lane(
    tmp_path: Path, local_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-cache-test")
    server = local_server_factory(time_scale=600)
    prices = PriceTable.load()
    rules = " ".join(f"Rule {i}: answer in one plain sentence." for i in range(180))
    for strategy, batch in (("realtime", False), ("batch", True), ("flex", True)):
        where = tmp_path / strategy
        where.mkdir()
        spec = job(
            where,
            rows=3,
            model="gpt-4o-mini",
            strategy=strategy,
            params={"max_tokens": 20},
            prompt={"system": f"({strategy}) {rules}", "user": "{{ text }}"},
            provider={"kind": "openai", "base_url": server.base_url},
        )
        result = run_job(spec, state_dir=where / "state", poll_interval=0.02)
        assert result.status.requests["succeeded"] == 3
        answers = answered(where / "state", result.run_id, "cost_usd")
        cached = []
        for text, cost in answers:
            usage = json.loads(text)["usage"]
            hit = usage["prompt_tokens_details"]["cached_tokens"]
            cached.append(hit)
            expected = prices.cost(
                "gpt-4o-mini",
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
                cached_tokens=hit,
                batch=batch,
            )
            assert cost == pytest.approx(expected)
        # the first request of each lane pays its whole prompt; the others find it cached
        assert sorted(cached)[0] == 0 and all(hit >= 1024 for hit in sorted(cached)[1:])


def test_the_server_refuses_what_a_reasoning_model_refuses(
    local_server_factory: ServerFactory,
) -> None:
    client = client_for(local_server_factory())
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="o4-mini", messages=messages, max_tokens=20)
    assert (refused.value.code, refused.value.param) == ("unsupported_parameter", "max_tokens")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-5-mini", messages=messages, temperature=0.2)
    assert (refused.value.code, refused.value.param) == ("unsupported_value", "temperature")
    # the default temperature is accepted, and other models take both
    client.chat.completions.create(model="o4-mini", messages=messages, temperature=1)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, max_tokens=5, temperature=0.2
    )
