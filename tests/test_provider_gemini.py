"""The Gemini provider: Batch Mode with inline requests and with an uploaded file, our tags in
the display name, generateContent as the real-time lane, safety blocks and truncation classified
as OpenAI's are, and every SDK error translated at the edge. Real HTTP against the local server
through the `google-genai` SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import ProviderRejected, UserInputError
from batchpilot.providers import (
    Answer,
    AuthenticationFailed,
    BatchTags,
    CallFailed,
    RemoteBatch,
    RemoteNotFound,
    RemoteStatus,
    kind,
    provider_for,
)
from batchpilot.providers.gemini import GeminiProvider, gemini_provider
from batchpilot.providers.gemini_batch import tags_of
from batchpilot.providers.gemini_shapes import request_parts, rest_request
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec.model import ProviderSpec

MODEL = "gemini-2.5-flash"
CHAT = "/v1/chat/completions"
FAST = {"time_scale": 1000.0, "validation_delay_s": 0.0, "finalizing_delay_s": 0.0}
SLOW = {"time_scale": 1.0, "validation_delay_s": 0.0, "per_request_s": 60.0, "cancel_delay_s": 0.0}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

_MADE: list[GeminiProvider] = []


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    while _MADE:
        _MADE.pop().close()


def provider(server: LocalServer, key: str = "test", **options: Any) -> GeminiProvider:
    made = gemini_provider(
        base_url=server.base_url, environ={"GEMINI_API_KEY": key}, max_retries=0, **options
    )
    _MADE.append(made)
    return made


def tags(run: str = "r1", batch: int = 7) -> BatchTags:
    return BatchTags(run, batch, "store-1", name=f"batchpilot-store-1-{run}-{batch}.jsonl")


def body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def write_input(directory: Path, count: int = 3) -> Path:
    path = directory / "input.jsonl"
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": CHAT, "body": body(f"q {i}")}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def wait_terminal(made: GeminiProvider, batch_id: str, timeout: float = 20.0) -> RemoteBatch:
    deadline = time.monotonic() + timeout
    while not (batch := made.batches.poll(batch_id)).status.terminal:
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.02)
    return batch


@pytest.mark.parametrize("inline_limit", [10**7, 0], ids=["inline", "file"])
def test_batch_lifecycle(
    inline_limit: int, tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    made = provider(local_server_factory(**FAST), inline_limit=inline_limit)
    path = write_input(tmp_path)
    staged = made.batches.stage(path, tags())
    assert (staged is None) == (inline_limit > 0)
    if staged is not None:
        size = path.stat().st_size
        assert made.batches.find_staged(tags(), size) == staged
        assert made.batches.find_staged(tags(), size + 1) is None
        assert made.batches.find_staged(tags(batch=8), size) is None
    created = made.batches.submit(path, CHAT, tags(), staged=staged)
    assert created.id.startswith("batches/") and created.status is RemoteStatus.VALIDATING
    assert created.tags == BatchTags("r1", 7, "store-1") and created.endpoint == CHAT
    done = wait_terminal(made, created.id)
    assert done.status is RemoteStatus.COMPLETED and done.model == MODEL
    target = tmp_path / "out"
    target.mkdir()
    (output,) = made.batches.results(done, target)
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["custom_id"] for line in answers] == ["req-0", "req-1", "req-2"]
    for line in answers:
        assert line["response"]["status_code"] == 200
        completion = line["response"]["body"]
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"]
        assert completion["usage"]["prompt_tokens"] > 0
    assert made.batches.results(done, target) == [output]
    given: list[bytes] = []
    assert made.batches.results(done, given.append) == []
    assert len(given) == 3
    found = list(made.batches.find("r1"))
    assert [b.id for b in found] == [created.id] and found[0].tags == created.tags
    with pytest.raises(ProviderRejected, match="already ended") as refused:
        made.batches.cancel(created.id)
    assert not isinstance(refused.value, RemoteNotFound)


def test_batches_are_found_by_run_newest_first(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    made = provider(local_server_factory(**FAST))
    path = write_input(tmp_path, 1)
    created = [made.batches.submit(path, CHAT, tags(batch=i)).id for i in range(3)]
    other = made.batches.submit(path, CHAT, tags(run="r2")).id
    assert [b.id for b in made.batches.find("r1")] == created[::-1]
    assert [b.id for b in made.batches.find()] == [other, *created[::-1]]
    with pytest.raises(RemoteNotFound):
        made.batches.poll("batches/missing")


def test_a_cancelled_batch_says_which_requests_never_ran(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    made = provider(local_server_factory(**SLOW))
    created = made.batches.submit(write_input(tmp_path, 3), CHAT, tags())
    # Gemini shows a batch being cancelled as running; the provider says cancelling
    assert made.batches.cancel(created.id).status in (
        RemoteStatus.CANCELLING,
        RemoteStatus.CANCELLED,
    )
    done = wait_terminal(made, created.id)
    assert done.status is RemoteStatus.CANCELLED
    given: list[bytes] = []
    made.batches.results(done, given.append)
    errors = [json.loads(line)["error"] for line in given]
    assert [e["code"] for e in errors] == ["batch_cancelled"] * 3


def test_a_refused_key_stops_and_stays_secret(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    made = provider(local_server_factory(api_key="right"), key="AIza-WRONG-1234")
    with pytest.raises(AuthenticationFailed) as refused:
        made.batches.submit(write_input(tmp_path, 1), CHAT, BatchTags("r", 1, "s"))
    assert "401" in str(refused.value) and "WRONG" not in str(refused.value)


def ask(made: GeminiProvider, payload: dict[str, Any], timeout_s: float | None = None) -> Any:
    async def go() -> Answer | CallFailed:
        api = made.realtime()
        try:
            return await api.call(payload, CHAT, custom_id="rt-1", timeout_s=timeout_s)
        finally:
            await api.aclose()

    return asyncio.run(go())


def test_a_real_time_answer_with_a_schema(local_server: LocalServer) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
    payload = body("count", response_format=schema, max_tokens=40)
    payload["messages"].insert(0, {"role": "system", "content": "Answer in JSON."})
    answer = ask(provider(local_server), payload)
    assert isinstance(answer, Answer)
    assert isinstance(json.loads(answer.body["choices"][0]["message"]["content"])["n"], int)
    assert answer.usage is not None and answer.usage["prompt_tokens"] > 0
    entry = local_server.admin.ledger()[-1]
    assert entry["custom_id"] == "rt-1" and entry["model"] == MODEL


@pytest.mark.parametrize(("fault", "finish"), [("length", "length"), ("refusal", "content_filter")])
def test_truncated_and_blocked_answers_are_classified(
    fault: str, finish: str, local_server_factory: Callable[..., LocalServer]
) -> None:
    faults = FaultPlan.model_validate({"faults": [{"kind": fault}]})
    answer = ask(provider(local_server_factory(faults=faults)), body("hi"))
    assert isinstance(answer, Answer)
    choice = answer.body["choices"][0]
    assert choice["finish_reason"] == finish
    assert (choice["message"]["refusal"] is not None) == (fault == "refusal")


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (401, False), (429, True), (500, True)]
)
def test_real_time_failures_are_translated(
    status: int, retryable: bool, local_server_factory: Callable[..., LocalServer]
) -> None:
    route = f"POST /v1beta/models/{MODEL}:generateContent"
    fault = {"kind": "http_error", "route": route, "status": status}
    made = provider(local_server_factory(faults=FaultPlan.model_validate({"faults": [fault]})))
    failed = ask(made, body("hi"))
    assert isinstance(failed, CallFailed)
    assert failed.reason.startswith(f"http {status}: ")
    assert (failed.status, failed.retryable, failed.may_have_run) == (status, retryable, False)
    assert failed.headers is not None


def test_a_real_time_call_without_an_answer_may_have_run(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    failed = ask(provider(local_server_factory(realtime_latency_s=2.0)), body("hi"), 0.2)
    assert isinstance(failed, CallFailed)
    assert failed.retryable and failed.may_have_run and failed.status is None


def test_bodies_are_translated() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    text = {"type": "text", "text": "what is it?"}
    chat = body("", max_tokens=9, stop="END", temperature=0.1)
    chat["messages"] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [text, image]},
        {"role": "assistant", "content": "a cat"},
    ]
    contents, config = request_parts(chat, CHAT)
    assert contents[0]["parts"][1] == {"inline_data": {"mime_type": "image/png", "data": b"hi"}}
    assert contents[1] == {"role": "model", "parts": [{"text": "a cat"}]}
    assert config == {
        "system_instruction": "Be brief.",
        "max_output_tokens": 9,
        "temperature": 0.1,
        "stop_sequences": ["END"],
    }
    rest = rest_request(chat, CHAT)
    assert rest["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": "aGk="}
    }
    assert rest["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert rest["generationConfig"]["maxOutputTokens"] == 9
    with pytest.raises(UserInputError, match="/v1/embeddings"):
        request_parts(chat, "/v1/embeddings")


def test_a_job_names_the_kind_and_its_key(tmp_path: Path, local_server: LocalServer) -> None:
    assert kind("gemini").capabilities.batch and kind("gemini").capabilities.realtime
    spec = ProviderSpec(kind="gemini", base_url=local_server.base_url)
    made = provider_for(spec, state_dir=tmp_path, environ={"GOOGLE_API_KEY": "g-key"})
    try:
        assert isinstance(made, GeminiProvider) and made.name == "gemini"
        assert list(made.batches.find()) == []
    finally:
        made.close()
    with pytest.raises(UserInputError, match="GEMINI_API_KEY"):
        provider_for(ProviderSpec(kind="gemini"), state_dir=tmp_path, environ={})
    named = ProviderSpec(kind="gemini", api_key_env="MY_KEY")
    with pytest.raises(UserInputError, match="MY_KEY"):
        provider_for(named, state_dir=tmp_path, environ={"GEMINI_API_KEY": "x"})


def test_tags_survive_the_display_name() -> None:
    from batchpilot.providers.gemini_batch import display_name

    tagged = BatchTags("job-1:a", 12, "store-9")
    assert tags_of(display_name(tagged)) == tagged
    assert tags_of(display_name(BatchTags("r", None, None))) == BatchTags("r", None, None)
    assert tags_of("somebody else's batch") is None and tags_of(None) is None


def test_a_batch_refused_for_a_full_queue_says_so(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    made = provider(local_server_factory(queue_limits={MODEL: 5}, **FAST))
    created = made.batches.submit(write_input(tmp_path, 2), CHAT, tags())
    done = wait_terminal(made, created.id)
    assert done.status is RemoteStatus.FAILED
    assert [e["code"] for e in done.errors] == ["token_limit_exceeded"]
