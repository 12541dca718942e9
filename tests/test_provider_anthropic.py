"""The Anthropic provider beyond the shared contract: building it from a job, our tags without
metadata (a record, and a batch whose create answer was lost), native Messages lines, and every
SDK error translated at the edge. Real HTTP against the local server through the SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import httpx2
import pytest

from batchpilot.errors import ProviderRejected, ProviderUnavailable, UserInputError
from batchpilot.providers import (
    Answer,
    AnthropicProvider,
    AuthenticationFailed,
    BatchTags,
    CallFailed,
    RemoteBatch,
    RemoteStatus,
    provider_for,
)
from batchpilot.providers.anthropic_batch import BatchRecord
from batchpilot.providers.anthropic_errors import translate_error
from batchpilot.providers.anthropic_shapes import rate_limit_headers
from batchpilot.providers.retry import retryable_status
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec.model import ProviderSpec

MODEL = "claude-haiku-4-5"
FAST = {"time_scale": 1000.0, "validation_delay_s": 0.0, "finalizing_delay_s": 0.0}


def provider(server: LocalServer, record: Path, key: str = "test") -> AnthropicProvider:
    base_url = server.base_url.removesuffix("/v1")
    client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
    return AnthropicProvider(client, record_path=record)


def message_lines(count: int) -> list[bytes]:
    body = {"model": MODEL, "max_tokens": 100, "system": "Be brief."}
    return [
        json.dumps(
            {
                "custom_id": f"m-{i}",
                "method": "POST",
                "url": "/v1/messages",
                "body": {**body, "messages": [{"role": "user", "content": f"question {i}"}]},
            }
        ).encode()
        for i in range(count)
    ]


def wait_terminal(made: AnthropicProvider, batch_id: str) -> RemoteBatch:
    deadline = time.monotonic() + 20
    while not (batch := made.batches.poll(batch_id)).status.terminal:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return batch


def test_a_job_names_the_kind(tmp_path: Path, local_server: LocalServer) -> None:
    spec = ProviderSpec(kind="anthropic", base_url=local_server.base_url)
    made = provider_for(spec, state_dir=tmp_path, environ={"ANTHROPIC_API_KEY": "k-1"})
    try:
        assert isinstance(made, AnthropicProvider) and made.name == "anthropic"
        assert made.capabilities.batch and made.capabilities.realtime
        created = made.batches.submit(
            iter(message_lines(1)), "/v1/messages", BatchTags("r", 1, "s")
        )
        assert (tmp_path / "anthropic-batches.jsonl").is_file()
        assert [b.id for b in made.batches.find("r")] == [created.id]
    finally:
        made.close()
    with pytest.raises(UserInputError, match="ANTHROPIC_API_KEY"):
        provider_for(spec, state_dir=tmp_path, environ={})


def test_native_lines_answer_as_messages(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    made = provider(local_server_factory(**FAST), tmp_path / "record.jsonl")
    try:
        created = made.batches.submit(
            iter(message_lines(2)), "/v1/messages", BatchTags("r", 1, "s")
        )
        done = wait_terminal(made, created.id)
        assert (done.status, done.completed, done.failed) == (RemoteStatus.COMPLETED, 2, 0)
        out = tmp_path / "out"
        out.mkdir()
        (output,) = made.batches.results(done, out)
        answers = [json.loads(line) for line in output.read_text().splitlines()]
        assert sorted(a["custom_id"] for a in answers) == ["m-0", "m-1"]
        body = answers[0]["response"]["body"]
        assert body["type"] == "message" and body["content"][0]["type"] == "text"
        assert body["usage"]["output_tokens"] > 0
    finally:
        made.close()


def test_a_batch_whose_create_answer_was_lost_is_adopted(
    tmp_path: Path, local_server: LocalServer
) -> None:
    record_path = tmp_path / "record.jsonl"
    record = BatchRecord(record_path)
    intent = {"name": "b-3", "run_id": "r9", "batch_id": 3, "store_id": "s"}
    record.add(
        {**intent, "endpoint": "/v1/messages", "intent": True, "count": 2, "at": time.time()}
    )
    # the create went through, and its answer never came back
    client = anthropic.Anthropic(base_url=local_server.base_url.removesuffix("/v1"), api_key="t")
    params = json.loads(message_lines(1)[0])["body"]
    lost = client.messages.batches.create(
        requests=[{"custom_id": f"m-{i}", "params": params} for i in range(2)]
    )
    client.messages.batches.create(requests=[{"custom_id": "other", "params": params}])
    made = provider(local_server, record_path)
    try:
        found = list(made.batches.find("r9"))
        assert [b.id for b in found] == [lost.id]
        assert found[0].tags == BatchTags("r9", 3, "s")
    finally:
        made.close()
    again = provider(local_server, record_path)
    try:
        assert [b.id for b in again.batches.find("r9")] == [lost.id]
    finally:
        again.close()


def test_a_refused_key_stops_and_stays_secret(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(api_key="right-key")
    made = provider(server, tmp_path / "record.jsonl", key="sk-ant-WRONG-1234")
    try:
        with pytest.raises(AuthenticationFailed) as refused:
            made.batches.submit(iter(message_lines(1)), "/v1/messages", BatchTags("r", 1, "s"))
        assert "401" in str(refused.value) and "WRONG" not in str(refused.value)
    finally:
        made.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 429, 500, 529])
def test_every_status_is_translated(status: int) -> None:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages/batches")
    body = {"type": "error", "error": {"type": "api_error", "message": "no"}}
    response = httpx2.Response(status, request=request, json=body)
    exc = anthropic.APIStatusError("no", response=response, body=body)
    error = translate_error(exc, "creating a batch", secret=None)
    assert isinstance(error, ProviderUnavailable if retryable_status(status) else ProviderRejected)
    assert isinstance(error, AuthenticationFailed) == (status in (401, 403))


def test_anthropic_rate_limit_headers_are_read_as_the_lane_reads_them() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:30Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:01.500Z",
        "retry-after": "3",
    }
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    found = rate_limit_headers(headers, now=start)
    assert found["x-ratelimit-limit-requests"] == "50"
    assert found["x-ratelimit-remaining-requests"] == "49"
    assert found["x-ratelimit-reset-requests"] == "30.000s"
    assert found["x-ratelimit-limit-tokens"] == "40000"
    assert found["x-ratelimit-reset-tokens"] == "1.500s"
    assert found["retry-after"] == "3"


@pytest.mark.parametrize(("fault", "finish"), [("length", "length"), ("refusal", "content_filter")])
def test_truncated_and_refused_answers_are_classified(
    fault: str, finish: str, tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    faults = FaultPlan.model_validate({"faults": [{"kind": fault}]})
    made = provider(local_server_factory(faults=faults), tmp_path / "record.jsonl")

    async def go() -> Answer | CallFailed:
        api = made.realtime()
        try:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            return await api.call(body, "/v1/chat/completions", custom_id="c-1")
        finally:
            await api.aclose()

    try:
        answer = asyncio.run(go())
    finally:
        made.close()
    assert isinstance(answer, Answer)
    choice = answer.body["choices"][0]
    assert choice["finish_reason"] == finish
    assert (choice["message"]["refusal"] is not None) == (fault == "refusal")
