"""One contract every provider's capabilities pass, driven through the official SDK over real
HTTP. A new provider adds itself to the `make_provider` parameters (with a local double)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from batchpilot.errors import ProviderRejected
from batchpilot.providers import (
    Answer,
    AnthropicProvider,
    BatchAPI,
    BatchTags,
    CallFailed,
    LocalProvider,
    OpenAIProvider,
    Provider,
    RealtimeAPI,
    RemoteBatch,
    RemoteNotFound,
    RemoteStatus,
    local_provider,
)
from batchpilot.providers.gemini import gemini_provider
from batchpilot.server import FaultPlan, LocalServer

from helpers import chat_line, jsonl

ProviderFactory = Callable[..., Provider]
CHAT = "/v1/chat/completions"

# A batch that stays in progress for a minute: one request per 60 virtual s, one virtual s per s.
SLOW = {"time_scale": 1.0, "validation_delay_s": 0.0, "per_request_s": 60.0, "cancel_delay_s": 0.0}


@pytest.fixture(params=["openai", "local", "anthropic", "gemini"])
def make_provider(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    local_server_factory: Callable[..., LocalServer],
) -> Iterator[ProviderFactory]:
    """Build providers of one kind with given server settings; all are closed afterwards."""
    made: list[Provider] = []

    def openai_variant(**settings: Any) -> Provider:
        server = local_server_factory(**settings)
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        return OpenAIProvider(client)

    def local_variant(**settings: Any) -> Provider:
        settings.setdefault("time_scale", 1000.0)
        # as the other variants' servers: a batch validates for a virtual second, so that a
        # busy machine does not see it in progress before `submit` returns
        settings.setdefault("validation_delay_s", 1.0)
        return local_provider(tmp_path / f"local-{len(made)}", responder="synthetic", **settings)

    def anthropic_variant(**settings: Any) -> Provider:
        server = local_server_factory(**settings)
        base_url = server.base_url.removesuffix("/v1")
        client = anthropic.Anthropic(base_url=base_url, api_key="test", max_retries=0)
        return AnthropicProvider(client, record_path=tmp_path / f"record-{len(made)}.jsonl")

    def gemini_variant(**settings: Any) -> Provider:
        server = local_server_factory(**settings)
        environ = {"GEMINI_API_KEY": "test"}
        return gemini_provider(base_url=server.base_url, environ=environ, max_retries=0)

    def factory(**settings: Any) -> Provider:
        build = {
            "openai": openai_variant,
            "local": local_variant,
            "gemini": gemini_variant,
        }.get(request.param, anthropic_variant)
        made.append(build(**settings))
        return made[-1]

    yield factory
    for provider in made:
        provider.close()


@pytest.fixture
def provider(make_provider: ProviderFactory) -> Provider:
    return make_provider()


def tags(run: str = "r1", batch: int = 7) -> BatchTags:
    return BatchTags(run, batch, "store-1", name=f"batchpilot-store-1-{run}-{batch}.jsonl")


def lines(count: int = 3) -> list[bytes]:
    return [jsonl([chat_line(f"req-{i}", f"question {i}")]).rstrip(b"\n") for i in range(count)]


def write_input(directory: Path, count: int = 3, name: str = "input.jsonl") -> Path:
    path = directory / name
    path.write_bytes(b"".join(line + b"\n" for line in lines(count)))
    return path


def wait_terminal(provider: Provider, batch_id: str, timeout: float = 15.0) -> RemoteBatch:
    deadline = time.monotonic() + timeout
    while not (batch := provider.batches.poll(batch_id)).status.terminal:
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {batch.status}"
        time.sleep(0.02)
    return batch


def submit(provider: Provider, tmp_path: Path, count: int = 3, **tagged: Any) -> RemoteBatch:
    return provider.batches.submit(write_input(tmp_path, count), CHAT, tags(**tagged))


def test_is_a_provider(provider: Provider) -> None:
    assert isinstance(provider, Provider)
    assert isinstance(provider.batches, BatchAPI)
    assert provider.name in {"openai", "local", "anthropic", "gemini"}
    assert isinstance(provider, LocalProvider) == (provider.name == "local")


def inline(provider: Provider) -> bool:
    """Whether the provider takes request lines inline (nothing staged, no file ids; Gemini
    takes small batches inline)."""
    return provider.name in ("anthropic", "gemini")


def test_staged_lines_are_found_by_name_and_size(provider: Provider, tmp_path: Path) -> None:
    path = write_input(tmp_path)
    size = path.stat().st_size
    staged = provider.batches.stage(path, tags())
    if inline(provider):
        assert staged is None and provider.batches.find_staged(tags(), size) is None
        return
    assert staged is not None
    assert provider.batches.find_staged(tags(), size) == staged
    assert provider.batches.find_staged(tags(), size + 1) is None
    assert provider.batches.find_staged(tags(batch=8), size) is None
    one_by_one = provider.batches.stage(iter(lines()), tags(batch=9))
    assert provider.batches.find_staged(tags(batch=9), size) == one_by_one


def test_batch_lifecycle(provider: Provider, tmp_path: Path) -> None:
    created = submit(provider, tmp_path)
    first = RemoteStatus.IN_PROGRESS if provider.name == "anthropic" else RemoteStatus.VALIDATING
    assert created.status is first
    assert created.tags == BatchTags("r1", 7, "store-1")
    assert created.endpoint == CHAT
    assert (created.staged is None) == inline(provider)

    done = wait_terminal(provider, created.id)
    assert done.status is RemoteStatus.COMPLETED
    assert (done.total, done.completed, done.failed) == (3, 3, 0)
    assert done.errors == []
    assert done.model == (None if provider.name == "anthropic" else "gpt-4o-mini")

    target = tmp_path / "out"
    target.mkdir()
    (output,) = provider.batches.results(done, target)
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in answers) == ["req-0", "req-1", "req-2"]
    assert all(line["response"]["status_code"] == 200 for line in answers)
    assert list(target.iterdir()) == [output]
    assert provider.batches.results(done, target) == [output]

    given: list[bytes] = []
    assert provider.batches.results(done, given.append) == []
    assert sorted(json.loads(line)["custom_id"] for line in given) == ["req-0", "req-1", "req-2"]

    found = list(provider.batches.find("r1"))
    assert [b.id for b in found] == [created.id]
    assert found[0].status is RemoteStatus.COMPLETED


def test_lines_given_one_by_one_or_staged_first(provider: Provider, tmp_path: Path) -> None:
    inline = provider.batches.submit(iter(lines(2)), CHAT, tags(batch=1))
    staged = provider.batches.stage(write_input(tmp_path, 2), tags(batch=2))
    again = iter(()) if staged is not None else iter(lines(2))  # nothing staged: inline
    from_staged = provider.batches.submit(again, CHAT, tags(batch=2), staged=staged)
    assert staged is None or from_staged.staged == staged
    for created in (inline, from_staged):
        done = wait_terminal(provider, created.id)
        assert (done.status, done.completed) == (RemoteStatus.COMPLETED, 2)


def test_cancel_a_running_batch(make_provider: ProviderFactory, tmp_path: Path) -> None:
    provider = make_provider(**SLOW)
    created = submit(provider, tmp_path, count=4)
    cancelling = provider.batches.cancel(created.id)
    assert cancelling.status in {RemoteStatus.CANCELLING, RemoteStatus.CANCELLED}
    assert wait_terminal(provider, created.id).status is RemoteStatus.CANCELLED
    assert provider.batches.cancel(created.id).status is RemoteStatus.CANCELLED


def test_cancel_a_completed_batch_is_rejected(provider: Provider, tmp_path: Path) -> None:
    batch = wait_terminal(provider, submit(provider, tmp_path).id)
    refused = r"400 .*already ended" if inline(provider) else r"cancelling batch .*409.*completed"
    with pytest.raises(ProviderRejected, match=refused) as caught:
        provider.batches.cancel(batch.id)
    assert not isinstance(caught.value, RemoteNotFound)


def test_missing_objects(provider: Provider, tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFound, match="batch_missing"):
        provider.batches.poll("batch_missing")
    gone = RemoteBatch("batch_gone", RemoteStatus.COMPLETED, CHAT, result_ids=("file-gone", None))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(RemoteNotFound, match="batch_gone" if inline(provider) else "file-gone"):
        provider.batches.results(gone, target)
    assert list(target.iterdir()) == []


def test_batches_are_found_by_run_newest_first(provider: Provider, tmp_path: Path) -> None:
    created = [submit(provider, tmp_path, count=1, batch=i).id for i in range(3)]
    other = submit(provider, tmp_path, count=1, run="r2").id
    assert [b.id for b in provider.batches.find("r1")] == created[::-1]
    assert [b.id for b in provider.batches.find()][:4] == [other, *created[::-1]]


def test_local_provider_finds_its_batches_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "local-server"
    first = local_provider(state, responder="synthetic", time_scale=1000.0)
    try:
        created = submit(first, tmp_path, run="r-restart")
        wait_terminal(first, created.id)
    finally:
        first.close()
    again = local_provider(state, responder="synthetic", time_scale=1000.0)
    try:
        found = list(again.batches.find("r-restart"))
        assert [b.id for b in found] == [created.id]
        assert found[0].status is RemoteStatus.COMPLETED
        out = tmp_path / "out"
        out.mkdir()
        (output,) = again.batches.results(found[0], out)
        assert len(output.read_text().splitlines()) == 3
    finally:
        again.close()


# the real-time API --------------------------------------------------------------------------


def ask(provider: Provider, timeout_s: float | None = None, **extra: Any) -> Answer | CallFailed:
    async def go() -> Answer | CallFailed:
        api = provider.realtime()
        try:
            assert isinstance(api, RealtimeAPI)
            body = chat_line("rt-1", "question")["body"] | extra
            return await api.call(body, CHAT, custom_id="rt-1", timeout_s=timeout_s)
        finally:
            await api.aclose()

    return asyncio.run(go())


def test_a_real_time_answer(provider: Provider) -> None:
    answer = ask(provider)
    assert isinstance(answer, Answer)
    assert answer.body["object"] == "chat.completion"
    assert answer.usage is not None and answer.usage["prompt_tokens"] > 0
    assert answer.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (401, False), (429, True), (500, True)]
)
def test_real_time_failures_are_translated(
    make_provider: ProviderFactory, status: int, retryable: bool, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["make_provider"]
    route = {
        "anthropic": "POST /v1/messages",
        "gemini": "POST /v1beta/models/gpt-4o-mini:generateContent",
    }.get(kind, "POST " + CHAT)
    fault = {"kind": "http_error", "route": route, "status": status}
    provider = make_provider(faults=FaultPlan.model_validate({"faults": [fault]}))
    failed = ask(provider)
    assert isinstance(failed, CallFailed)
    assert failed.reason.startswith(f"http {status}: ")
    assert (failed.status, failed.retryable, failed.may_have_run) == (status, retryable, False)
    assert failed.refused_key == (status == 401)
    assert failed.headers is not None


def test_a_real_time_call_without_an_answer_may_have_run(make_provider: ProviderFactory) -> None:
    provider = make_provider(realtime_latency_s=2.0)
    failed = ask(provider, timeout_s=0.2)
    assert isinstance(failed, CallFailed)
    assert failed.retryable and failed.may_have_run and failed.status is None


def test_an_unreachable_server_has_not_run_the_call(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-SECRET-1")
    provider = OpenAIProvider(client)
    try:
        failed = ask(provider)
    finally:
        provider.close()
    assert isinstance(failed, CallFailed)
    assert failed.reason.startswith("connection error")
    assert failed.retryable and not failed.may_have_run
    assert "sk-SECRET-1" not in failed.reason
