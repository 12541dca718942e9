"""Every injectable fault, observed through the official SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from batchpilot.errors import ConfigError
from batchpilot.server import FaultPlan, LocalServer, load_fault_plan

from helpers import by_custom_id, chat_line, client_for, read_jsonl, submit, wait_for


def plan(*faults: dict[str, Any], seed: int = 1) -> FaultPlan:
    return FaultPlan.model_validate({"seed": seed, "faults": list(faults)})


def run_batch(server: LocalServer, count: int = 6, **kwargs: Any) -> Any:
    client = client_for(server)
    batch = submit(client, [chat_line(f"r{i}", f"question {i}") for i in range(count)], **kwargs)
    return client, wait_for(client, batch.id)


def test_http_429_is_retried_by_the_sdk(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(
        faults=plan(
            {
                "kind": "http_error",
                "route": "POST /v1/chat/completions",
                "status": 429,
                "nth": [1],
                "retry_after_s": 0.01,
            }
        )
    )
    with pytest.raises(openai.RateLimitError):
        client_for(server).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    answer = client_for(server, max_retries=2).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content
    assert len(server.admin.ledger()) == 1


def test_http_500_on_any_route(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(
        faults=plan({"kind": "http_error", "route": "GET /v1/batches*", "status": 500, "first": 2})
    )
    client = client_for(server)
    with pytest.raises(openai.InternalServerError):
        client.batches.list()
    with pytest.raises(openai.InternalServerError):
        client.batches.list()
    assert list(client.batches.list()) == []


def test_http_faults_by_rate_are_reproducible(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    fault = {"kind": "http_error", "route": "GET /v1/files", "status": 503, "rate": 0.5}

    def outcomes(seed: int) -> list[bool]:
        client = client_for(local_server_factory(faults=plan(fault, seed=seed)))
        results = []
        for _ in range(20):
            try:
                client.files.list()
                results.append(True)
            except openai.InternalServerError:
                results.append(False)
        return results

    first, again, other = outcomes(3), outcomes(3), outcomes(4)
    assert first == again
    assert first != other
    assert 3 < first.count(False) < 17


def test_transient_404_after_create(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(faults=plan({"kind": "not_found_after_create", "calls": 2}))
    client = client_for(server)
    batch = submit(client, [chat_line("a", "q")])
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(batch.id)
    assert wait_for(client, batch.id).status == "completed"


def test_whole_batch_failure(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(faults=plan({"kind": "batch_fail", "nth": [2]}))
    _, first = run_batch(server)
    _, second = run_batch(server)
    assert first.status == "completed"
    assert second.status == "failed"
    assert second.errors.data[0].code == "server_error"


def test_batch_faults_match_metadata(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(
        faults=plan({"kind": "batch_fail", "match": {"metadata": {"doomed": "yes"}}})
    )
    assert run_batch(server, metadata={"doomed": "no"})[1].status == "completed"
    assert run_batch(server, metadata={"doomed": "yes"})[1].status == "failed"


def test_early_expiry_keeps_partial_output(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(faults=plan({"kind": "batch_expire", "after_fraction": 0.5}))
    client, batch = run_batch(server, count=6)
    assert batch.status == "expired"
    assert len(read_jsonl(client, batch.output_file_id)) == 3
    errors = read_jsonl(client, batch.error_file_id)
    assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 3
    assert len(server.admin.ledger()) == 3


def test_finalizing_stall(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(
        time_scale=1000.0, faults=plan({"kind": "finalizing_stall", "seconds": 1e9})
    )
    client = client_for(server)
    batch = submit(client, [chat_line("a", "q")])
    stalled = wait_for(client, batch.id, {"finalizing"})
    assert stalled.request_counts.completed == 1
    time.sleep(0.3)
    assert client.batches.retrieve(batch.id).status == "finalizing"
    server.admin.advance(2e9)
    assert wait_for(client, batch.id).status == "completed"


def test_line_errors_hide_inside_completed_batches(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(
        faults=plan(
            {"kind": "line_error", "status": 429, "match": {"custom_id": "r1"}},
            {"kind": "line_error", "status": 500, "match": {"custom_id": "r2"}},
            {"kind": "line_timeout", "match": {"custom_id": "r3"}},
        )
    )
    client, batch = run_batch(server, count=5)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 3)
    errors = by_custom_id(read_jsonl(client, batch.error_file_id))
    assert errors["r1"]["response"]["status_code"] == 429
    assert errors["r1"]["error"] is None
    assert errors["r1"]["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
    assert errors["r2"]["response"]["status_code"] == 500
    assert errors["r3"]["response"] is None
    assert errors["r3"]["error"]["code"] == "request_timeout"
    assert set(by_custom_id(read_jsonl(client, batch.output_file_id))) == {"r0", "r4"}


def test_line_faults_draw_again_for_a_retry(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(faults=plan({"kind": "line_error", "status": 500, "nth": [1]}))
    _, first = run_batch(server, count=3)
    _, retry = run_batch(server, count=3)
    assert first.request_counts.failed == 3
    assert retry.request_counts.completed == 3


def test_every_line_failed(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(faults=plan({"kind": "all_lines_fail", "status": 500}))
    client, batch = run_batch(server, count=4)
    assert batch.status == "completed"
    assert batch.output_file_id is None
    assert batch.request_counts.failed == 4
    assert len(read_jsonl(client, batch.error_file_id)) == 4


def test_garbled_and_truncated_lines(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(
        faults=plan(
            {"kind": "garbled_line", "match": {"custom_id": "r0"}},
            {"kind": "truncated_line", "match": {"custom_id": "r1"}},
        )
    )
    client, batch = run_batch(server, count=3)
    text = client.files.content(batch.output_file_id).text.splitlines()
    parsed, broken = [], 0
    for line in text:
        try:
            parsed.append(json.loads(line)["custom_id"])
        except ValueError:
            broken += 1
    assert parsed == ["r2"]
    assert broken == 2


def test_refusal_and_length(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(
        faults=plan(
            {"kind": "refusal", "match": {"custom_id": "r0"}},
            {"kind": "length", "match": {"custom_id": "r1"}},
        )
    )
    client, batch = run_batch(server, count=3)
    output = by_custom_id(read_jsonl(client, batch.output_file_id))
    refused = output["r0"]["response"]["body"]["choices"][0]
    assert refused["message"]["content"] is None
    assert refused["message"]["refusal"]
    assert output["r1"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert output["r2"]["response"]["body"]["choices"][0]["finish_reason"] == "stop"


def test_refusal_in_real_time(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(faults=plan({"kind": "refusal", "first": 1}))
    client = client_for(server)
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert client.chat.completions.create(**ask).choices[0].message.refusal  # type: ignore[call-overload]
    assert client.chat.completions.create(**ask).choices[0].message.refusal is None  # type: ignore[call-overload]


def test_fault_file_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text("seed: 1\nfaults:\n  - kind: http_error\n    rat: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_fault_plan(path)
    assert "faults.0.rat" in str(info.value) and str(path) in str(info.value)
    path.write_text("faults:\n  - kind: meteor_strike\n")
    with pytest.raises(ConfigError, match=r"faults\.0\.kind"):
        load_fault_plan(path)
    path.write_text("faults: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fault_plan(path)
    path.write_text("seed: 3\nfaults:\n  - kind: line_error\n    status: 429\n    rate: 0.1\n")
    assert load_fault_plan(path).faults[0].status == 429
