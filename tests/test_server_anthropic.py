"""Anthropic's Messages and Message Batches APIs of the local server, driven through the official
`anthropic` SDK over real HTTP: every object it receives parses into the SDK's own types."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import anthropic
import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatch

from batchpilot.server import FaultPlan, LocalServer
from batchpilot.server.config import RateLimit

from helpers import engine_moves_new_batches_on_at_once

MODEL = "claude-haiku-4-5"
FAST = {"time_scale": 1000.0, "validation_delay_s": 0.0, "finalizing_delay_s": 0.0}


_OPENED: list[anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Every client a test opens is closed when it ends, not left to the garbage collector."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def client_for(server: LocalServer, key: str = "test") -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=server.base_url.removesuffix("/v1"), api_key=key)
    _OPENED.append(client)
    return client


def params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 200,
        "system": "Answer briefly.",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def requests(count: int) -> list[Any]:
    return [{"custom_id": f"req-{i}", "params": params(f"question {i}")} for i in range(count)]


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 20.0) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, f"batch still {batch.processing_status}"
        time.sleep(0.02)
    return batch


def test_a_message(local_server: LocalServer) -> None:
    client = client_for(local_server)
    message = client.messages.create(**params("What is 2 + 2?"))
    assert isinstance(message, Message)
    assert message.role == "assistant" and message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert local_server.admin.ledger()[-1]["endpoint"] == "/v1/messages"


def test_structured_output_and_a_forced_tool(local_server: LocalServer) -> None:
    client = client_for(local_server)
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    tool = client.messages.create(
        **params("2 + 2?"),
        tools=[{"name": "reply", "description": "the reply", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "reply"},
    )
    assert tool.stop_reason == "tool_use"
    block = tool.content[0]
    assert block.type == "tool_use" and block.name == "reply"
    assert isinstance(block.input, dict) and isinstance(block.input["answer"], int)
    raw = client.messages.with_raw_response.create(
        **params("2 + 2?"),
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    text = raw.parse().content[0]
    assert text.type == "text" and text.text.startswith("{")


def test_errors_come_in_anthropics_shape(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(api_key="right")
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client_for(server, "wrong").messages.create(**params("hi"))
    assert refused.value.type == "authentication_error"
    client = client_for(server, "right")
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=0, messages=[])  # type: ignore[arg-type]
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.batches.retrieve("msgbatch_nothing")
    assert missing.value.type == "not_found_error"


def test_batch_lifecycle(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(**FAST)
    client = client_for(server)
    batch = client.messages.batches.create(requests=requests(3))
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 3
    assert batch.results_url is None
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.succeeded == 3 and ended.request_counts.processing == 0
    assert ended.ended_at is not None and ended.results_url
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {"req-0", "req-1", "req-2"}
    for result in results.values():
        assert result.type == "succeeded"
        assert result.message.content[0].type == "text"
        assert result.message.usage.output_tokens > 0
    runs = [e for e in server.admin.ledger() if e["batch_id"] == batch.id]
    assert sorted(e["custom_id"] for e in runs) == ["req-0", "req-1", "req-2"]
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        client.messages.batches.cancel(batch.id)
    deleted = client.messages.batches.delete(batch.id)
    assert deleted.type == "message_batch_deleted" and deleted.id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_a_bad_request_errs_alone(local_server_factory: Callable[..., LocalServer]) -> None:
    client = client_for(local_server_factory(**FAST))
    bad = {
        "custom_id": "bad",
        "params": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    }
    batch = client.messages.batches.create(requests=[*requests(1), bad])  # type: ignore[list-item]
    ended = wait_ended(client, batch.id)
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["req-0"].type == "succeeded"
    errored = results["bad"]
    assert errored.type == "errored"
    assert errored.error.error.type == "invalid_request_error"
    assert "max_tokens" in errored.error.error.message


def test_create_is_checked(local_server: LocalServer) -> None:
    client = client_for(local_server)
    twice = [*requests(1), *requests(1)]
    with pytest.raises(anthropic.BadRequestError, match="Duplicate custom_id"):
        client.messages.batches.create(requests=twice)
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=[{"custom_id": "a b", "params": params("x")}])


def test_cancel_keeps_what_ran_and_cancels_the_rest(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(
        time_scale=1.0, validation_delay_s=0.0, per_request_s=60.0, cancel_delay_s=0.0
    )
    client = client_for(server)
    batch = client.messages.batches.create(requests=requests(3))
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status in ("canceling", "ended")
    assert canceling.cancel_initiated_at is not None
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.canceled == 3
    kinds = {r.result.type for r in client.messages.batches.results(batch.id)}
    assert kinds == {"canceled"}
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"


def test_a_batch_that_expires_keeps_its_partial_results(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    faults = FaultPlan.model_validate({"faults": [{"kind": "batch_expire", "after_fraction": 0.5}]})
    client = client_for(local_server_factory(faults=faults, **FAST))
    batch = client.messages.batches.create(requests=requests(4))
    ended = wait_ended(client, batch.id)
    counts = ended.request_counts
    assert (counts.succeeded, counts.expired) == (2, 2)
    kinds = sorted(r.result.type for r in client.messages.batches.results(batch.id))
    assert kinds == ["expired", "expired", "succeeded", "succeeded"]


def test_list_pages_newest_first_both_ways(local_server: LocalServer) -> None:
    client = client_for(local_server)
    made = [client.messages.batches.create(requests=requests(1)).id for _ in range(5)]
    newest_first = made[::-1]
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first
    page = client.messages.batches.list(limit=2, after_id=newest_first[1])
    assert [b.id for b in page.data] == newest_first[2:4] and page.has_more
    before = client.messages.batches.list(limit=2, before_id=newest_first[3])
    assert [b.id for b in before.data] == newest_first[1:3]


def test_rate_limits_come_in_anthropics_headers(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(rate_limits={MODEL: RateLimit(rpm=2)}, time_scale=1e-9)
    client = client_for(server)
    raw = client.messages.with_raw_response.create(**params("hi"))
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "1"
    reset = datetime.fromisoformat(raw.headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None and raw.headers["request-id"]
    client.messages.create(**params("hi"))
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.with_options(max_retries=0).messages.create(**params("hi"))
    assert limited.value.type == "rate_limit_error"
    assert float(limited.value.response.headers["retry-after"]) > 0


def test_a_create_answers_in_progress_with_nothing_counted_though_the_batch_ends_at_once(
    local_server_factory: Callable[..., LocalServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = local_server_factory(**FAST)
    engine_moves_new_batches_on_at_once(server, monkeypatch, until=frozenset({"completed"}))
    client = client_for(server)
    batch = client.messages.batches.create(requests=requests(1))
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 1 and batch.request_counts.succeeded == 0
