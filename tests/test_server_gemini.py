"""Gemini's generateContent, Batch Mode and Files API of the local server, driven through the
official `google-genai` SDK over real HTTP: every object it receives parses into the SDK's own
types."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from batchpilot.server import FaultPlan, LocalServer
from batchpilot.server.config import RateLimit

from helpers import engine_moves_new_batches_on_at_once

MODEL = "gemini-2.5-flash"
ENDPOINT = "/v1beta/models:generateContent"
FAST = {"time_scale": 1000.0, "validation_delay_s": 0.0, "finalizing_delay_s": 0.0}
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}

_OPENED: list[genai.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def client_for(server: LocalServer, key: str = "test", version: str = "v1beta") -> genai.Client:
    options = types.HttpOptions(base_url=server.base_url.removesuffix("/v1"), api_version=version)
    client = genai.Client(api_key=key, http_options=options)
    _OPENED.append(client)
    return client


def inline(count: int, start: int = 0) -> list[Any]:
    return [
        {
            "contents": [{"role": "user", "parts": [{"text": f"question {i}"}]}],
            "config": {"max_output_tokens": 100},
            "metadata": {"key": f"req-{i}"},
        }
        for i in range(start, start + count)
    ]


def wait_ended(client: genai.Client, name: str, timeout: float = 20.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while (job := client.batches.get(name=name)).state is None or job.state.value not in ENDED:
        assert time.monotonic() < deadline, f"batch still {job.state}"
        time.sleep(0.02)
    return job


def test_generate_content_with_a_response_schema(local_server: LocalServer) -> None:
    client = client_for(local_server)
    config = types.GenerateContentConfig(
        system_instruction="Answer with a number.",
        max_output_tokens=50,
        response_mime_type="application/json",
        response_json_schema=SCHEMA,
    )
    response = client.models.generate_content(model=MODEL, contents="2 + 2?", config=config)
    assert isinstance(response, types.GenerateContentResponse)
    assert isinstance(json.loads(response.text or "")["answer"], int)
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.candidates_token_count
    entry = local_server.admin.ledger()[-1]
    assert entry["endpoint"] == ENDPOINT and entry["model"] == MODEL
    # the SDK's default API version, v1, shares its prefix with OpenAI's API
    again = client_for(local_server, version="v1").models.generate_content(
        model=MODEL, contents="hello"
    )
    assert again.text and local_server.admin.ledger()[-1]["endpoint"] == ENDPOINT


def test_errors_come_in_googles_shape(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(api_key="right")
    with pytest.raises(errors.ClientError) as refused:
        client_for(server, "wrong").models.generate_content(model=MODEL, contents="hi")
    assert refused.value.code == 401 and refused.value.status == "UNAUTHENTICATED"
    client = client_for(server, "right")
    with pytest.raises(errors.ClientError) as missing:
        client.models.generate_content(model="gemini-nothing", contents="hi")
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as gone:
        client.batches.get(name="batches/nothing")
    assert gone.value.code == 404 and gone.value.status == "NOT_FOUND"


def test_an_inline_batch_runs_and_answers_inline_in_order(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(**FAST)
    client = client_for(server)
    job = client.batches.create(model=MODEL, src=inline(3), config={"display_name": "mine"})
    assert job.name and job.name.startswith("batches/") and job.display_name == "mine"
    assert job.state == types.JobState.JOB_STATE_PENDING and job.model == f"models/{MODEL}"
    ended = wait_ended(client, job.name)
    assert ended.state == types.JobState.JOB_STATE_SUCCEEDED and ended.end_time is not None
    assert ended.dest is not None and ended.dest.inlined_responses is not None
    answers = ended.dest.inlined_responses
    assert [a.metadata for a in answers] == [{"key": f"req-{i}"} for i in range(3)]
    for answer in answers:
        assert answer.error is None and answer.response is not None
        assert answer.response.text and answer.response.usage_metadata is not None
    runs = sorted(e["custom_id"] for e in server.admin.ledger() if e["batch_id"])
    assert runs == ["req-0", "req-1", "req-2"]
    assert [b.name for b in client.batches.list()] == [job.name]
    with pytest.raises(errors.ClientError, match="already ended"):
        client.batches.cancel(name=job.name)
    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError):
        client.batches.get(name=job.name)


def test_a_file_batch_answers_in_a_file(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(**FAST)
    client = client_for(server)
    lines = [
        {"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"x{i}"}]}]}}
        for i in range(4)
    ]
    lines[2]["request"] = {"contents": []}  # a bad request errs alone
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.upload(
        file=io.BytesIO(data), config={"mime_type": "application/jsonl", "display_name": "in"}
    )
    assert isinstance(upload, types.File) and upload.name and upload.size_bytes == len(data)
    assert upload.display_name == "in" and upload.state == types.FileState.ACTIVE
    assert client.files.get(name=upload.name).size_bytes == len(data)
    assert [f.name for f in client.files.list()] == [upload.name]
    job = client.batches.create(model=MODEL, src=upload.name)
    ended = wait_ended(client, job.name or "")
    assert ended.dest is not None and ended.dest.file_name
    output = client.files.download(file=ended.dest.file_name)
    found = [json.loads(line) for line in output.decode().splitlines()]
    assert [item["key"] for item in found] == ["k0", "k1", "k2", "k3"]
    for item in found:
        if item["key"] == "k2":
            error = types.JobError.model_validate(item["error"])
            assert error.code == 3 and error.message and "contents" in error.message
        else:
            response = types.GenerateContentResponse.model_validate(item["response"])
            assert response.text
    client.files.delete(name=upload.name)
    assert list(client.files.list()) == []


def test_safety_blocks_and_truncation(local_server_factory: Callable[..., LocalServer]) -> None:
    faults = FaultPlan.model_validate(
        {
            "faults": [
                {"kind": "refusal", "match": {"custom_id": "req-0"}},
                {"kind": "length", "match": {"custom_id": "req-1"}},
            ]
        }
    )
    client = client_for(local_server_factory(faults=faults, **FAST))
    job = client.batches.create(model=MODEL, src=inline(3))
    ended = wait_ended(client, job.name or "")
    assert ended.dest is not None and ended.dest.inlined_responses is not None
    reasons = []
    for answer in ended.dest.inlined_responses:
        assert answer.response is not None and answer.response.candidates
        reasons.append(answer.response.candidates[0].finish_reason)
    assert reasons == [types.FinishReason.SAFETY, types.FinishReason.MAX_TOKENS, "STOP"]


def test_cancel_keeps_what_ran_and_cancels_the_rest(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(
        time_scale=1.0, validation_delay_s=0.0, per_request_s=60.0, cancel_delay_s=0.0
    )
    client = client_for(server)
    job = client.batches.create(model=MODEL, src=inline(3))
    client.batches.cancel(name=job.name or "")
    ended = wait_ended(client, job.name or "")
    assert ended.state == types.JobState.JOB_STATE_CANCELLED
    assert ended.dest is not None and ended.dest.inlined_responses is not None
    codes = {a.error.code for a in ended.dest.inlined_responses if a.error is not None}
    assert codes == {1} and len(ended.dest.inlined_responses) == 3


def test_a_batch_that_expires_keeps_its_partial_results(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    faults = FaultPlan.model_validate({"faults": [{"kind": "batch_expire", "after_fraction": 0.5}]})
    client = client_for(local_server_factory(faults=faults, **FAST))
    job = client.batches.create(model=MODEL, src=inline(4))
    ended = wait_ended(client, job.name or "")
    assert ended.state == types.JobState.JOB_STATE_EXPIRED
    assert ended.dest is not None and ended.dest.inlined_responses is not None
    kinds = sorted("error" if a.error else "response" for a in ended.dest.inlined_responses)
    assert kinds == ["error", "error", "response", "response"]


def test_list_pages_newest_first(local_server: LocalServer) -> None:
    client = client_for(local_server)
    made = [client.batches.create(model=MODEL, src=inline(1)).name for _ in range(3)]
    pager = client.batches.list(config={"page_size": 2})
    assert [b.name for b in pager] == made[::-1]


def test_rate_limits_answer_429_with_retry_after(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(rate_limits={MODEL: RateLimit(rpm=1)}, time_scale=1e-9)
    client = client_for(server)
    client.models.generate_content(model=MODEL, contents="hi")
    with pytest.raises(errors.ClientError) as limited:
        client.models.generate_content(model=MODEL, contents="hi")
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    assert float(limited.value.response.headers["retry-after"]) > 0


def test_an_upload_in_chunks_and_a_chunk_out_of_place(local_server: LocalServer) -> None:
    client = client_for(local_server)

    class Chunked(io.BytesIO):
        """A stream that gives its bytes four at a time: the SDK sends one chunk per read."""

        def read(self, size: int | None = -1) -> bytes:
            return super().read(4)

    data = b"0123456789"
    upload = client.files.upload(file=Chunked(data), config={"mime_type": "application/jsonl"})
    assert upload.size_bytes == len(data) and upload.name
    assert client.files.download(file=upload.name) == data
    root = local_server.base_url.removesuffix("/v1")
    start = {
        "x-goog-upload-protocol": "resumable",
        "x-goog-upload-command": "start",
        "x-goog-upload-header-content-length": "10",
        "x-goog-api-key": "test",
    }
    with httpx.Client() as http:
        started = http.post(f"{root}/upload/v1beta/files", headers=start, json={"file": {}})
        url = started.headers["x-goog-upload-url"]
        step = {"x-goog-upload-command": "upload", "x-goog-upload-offset": "4"}
        refused = http.post(url, headers={**step, "x-goog-api-key": "test"}, content=b"4567")
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "INVALID_ARGUMENT"
    # the status header tells the SDK not to send the step again
    assert refused.headers["x-goog-upload-status"] == "final"


def test_a_create_answers_pending_though_the_engine_moves_the_batch_at_once(
    local_server_factory: Callable[..., LocalServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = local_server_factory(**FAST)
    engine_moves_new_batches_on_at_once(server, monkeypatch)
    client = client_for(server)
    job = client.batches.create(model=MODEL, src=inline(1))
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert client.batches.get(name=job.name or "").state != types.JobState.JOB_STATE_PENDING
