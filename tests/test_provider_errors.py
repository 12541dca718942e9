"""Errors at the provider edge: SDK exceptions become ours, keys never leak, keys are looked up."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from batchpilot.errors import (
    MissingDependency,
    ProviderRejected,
    ProviderUnavailable,
    UserInputError,
)
from batchpilot.providers import (
    BatchTags,
    LocalProvider,
    OpenAIProvider,
    Provider,
    RemoteBatch,
    RemoteNotFound,
    RemoteStatus,
    openai_provider,
    provider_for,
)
from batchpilot.providers.openai import translate_error
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec.model import ProviderSpec

from helpers import chat_line, jsonl

SECRET = "sk-test-SECRET-123"
WRONG = "sk-wrong-OTHER-456"
TAGS = BatchTags("run-1", 1, "store-1", name="input.jsonl")
CHAT = "/v1/chat/completions"

Connect = Callable[..., OpenAIProvider]


def plan(*faults: dict[str, Any]) -> FaultPlan:
    return FaultPlan.model_validate({"seed": 1, "faults": list(faults)})


@pytest.fixture
def connect() -> Iterator[Connect]:
    """OpenAIProviders over SDK clients for a server (or URL); all closed after the test."""
    made: list[OpenAIProvider] = []

    def factory(
        server: LocalServer | str, *, api_key: str = "test", max_retries: int = 0
    ) -> OpenAIProvider:
        base_url = server if isinstance(server, str) else server.base_url
        client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries)
        made.append(OpenAIProvider(client))
        return made[-1]

    yield factory
    for provider in made:
        provider.close()


def input_file(tmp_path: Path, lines: int = 2) -> Path:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl(chat_line(f"r{i}", f"question {i}") for i in range(lines)))
    return path


def wait_terminal(provider: Provider, batch_id: str, timeout: float = 15.0) -> RemoteBatch:
    deadline = time.monotonic() + timeout
    while not (batch := provider.batches.poll(batch_id)).status.terminal:
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {batch.status}"
        time.sleep(0.02)
    return batch


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_5xx_after_the_sdk_retries_is_unavailable(
    local_server_factory: Callable[..., LocalServer], connect: Connect, tmp_path: Path
) -> None:
    server = local_server_factory(
        faults=plan({"kind": "http_error", "route": "POST /v1/files", "status": 500})
    )
    with pytest.raises(ProviderUnavailable, match=r"uploading .* as input\.jsonl: 500 "):
        connect(server, max_retries=1).batches.stage(input_file(tmp_path), TAGS)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ProviderRejected),
        (401, ProviderRejected),
        (403, ProviderRejected),
        (404, RemoteNotFound),
        (408, ProviderUnavailable),
        (409, ProviderUnavailable),
        (422, ProviderRejected),
        (429, ProviderUnavailable),
        (500, ProviderUnavailable),
        (503, ProviderUnavailable),
    ],
)
def test_status_codes_map_to_our_errors(
    local_server_factory: Callable[..., LocalServer],
    connect: Connect,
    status: int,
    expected: type[Exception],
) -> None:
    server = local_server_factory(
        faults=plan({"kind": "http_error", "route": "GET /v1/batches/*", "status": status})
    )
    with pytest.raises(expected, match=rf"reading batch batch_abc: {status} "):
        connect(server).batches.poll("batch_abc")


def test_bad_request_is_rejected_with_the_servers_message(
    local_server: LocalServer, connect: Connect, tmp_path: Path
) -> None:
    provider = connect(local_server)
    path = input_file(tmp_path)
    uploaded = provider.batches.stage(path, TAGS)
    with pytest.raises(ProviderRejected) as caught:
        provider.batches.submit(path, "/v1/invalid/endpoint", TAGS, staged=uploaded)
    message = str(caught.value)
    assert message.startswith(f"creating batch for file {uploaded}: 400 invalid_value: ")
    assert "Invalid value: '/v1/invalid/endpoint'" in message
    assert isinstance(caught.value.__cause__, openai.BadRequestError)


def test_429_is_retried_by_the_sdk(
    local_server_factory: Callable[..., LocalServer], connect: Connect, tmp_path: Path
) -> None:
    server = local_server_factory(
        faults=plan(
            {
                "kind": "http_error",
                "route": "POST /v1/files",
                "status": 429,
                "first": 1,
                "retry_after_s": 0.01,
            }
        )
    )
    provider = connect(server, max_retries=1)
    uploaded = provider.batches.stage(input_file(tmp_path), TAGS)
    assert provider.batches.find_staged(TAGS, input_file(tmp_path).stat().st_size) == uploaded


def test_connection_refused_is_unavailable(connect: Connect) -> None:
    url = closed_port_url()
    with pytest.raises(ProviderUnavailable, match="listing batches: cannot reach GET ") as caught:
        list(connect(url, api_key=SECRET).batches.find())
    assert SECRET not in str(caught.value)


def test_transient_not_found_after_create(
    local_server_factory: Callable[..., LocalServer], connect: Connect, tmp_path: Path
) -> None:
    server = local_server_factory(faults=plan({"kind": "not_found_after_create", "calls": 1}))
    provider = connect(server)
    created = provider.batches.submit(input_file(tmp_path), CHAT, TAGS)
    with pytest.raises(RemoteNotFound, match=created.id):
        provider.batches.poll(created.id)
    assert provider.batches.poll(created.id).id == created.id


def test_messages_never_contain_the_key(
    local_server_factory: Callable[..., LocalServer], connect: Connect, tmp_path: Path
) -> None:
    server = local_server_factory(api_key=SECRET)
    right = connect(server, api_key=SECRET)
    staged = right.batches.stage(input_file(tmp_path), TAGS)
    assert right.batches.find_staged(TAGS, input_file(tmp_path).stat().st_size) == staged
    with pytest.raises(RemoteNotFound) as missing:
        right.batches.poll("batch_missing")
    with pytest.raises(ProviderRejected) as refused:
        connect(server, api_key=WRONG).batches.poll("batch_missing")
    assert "401" in str(refused.value)
    assert not isinstance(refused.value, RemoteNotFound)
    for error in (missing.value, refused.value):
        assert SECRET not in str(error)
        assert WRONG not in str(error)


def test_request_id_is_named_and_a_key_in_a_message_is_redacted() -> None:
    request = httpx2.Request("POST", "https://api.example.test/v1/batches")
    response = httpx2.Response(
        401,
        headers={"x-request-id": "req_123abc"},
        json={"error": {"message": f"Incorrect API key provided: {SECRET}.", "type": "x"}},
        request=request,
    )
    body = response.json()["error"]
    exc = openai.AuthenticationError("Error code: 401", response=response, body=body)
    error = translate_error(exc, "creating batch for file file-1", secret=SECRET)
    assert isinstance(error, ProviderRejected)
    assert str(error) == (
        "creating batch for file file-1: 401 x: Incorrect API key provided: ***. "
        "(request id req_123abc)"
    )


def test_failed_download_leaves_nothing(
    local_server_factory: Callable[..., LocalServer], connect: Connect, tmp_path: Path
) -> None:
    server = local_server_factory(
        faults=plan(
            {"kind": "http_error", "route": "GET /v1/files/*/content", "status": 503, "first": 1}
        )
    )
    provider = connect(server)
    done = wait_terminal(provider, provider.batches.submit(input_file(tmp_path), CHAT, TAGS).id)
    output = done.result_ids[0]
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ProviderUnavailable, match=f"downloading file {output}: 503"):
        provider.batches.results(done, target)
    assert list(target.iterdir()) == []
    (saved,) = provider.batches.results(done, target)
    assert saved.parent == target and saved.read_bytes().count(b"\n") == 2
    assert list(target.iterdir()) == [saved]


# key lookup ---------------------------------------------------------------------------------


def test_a_missing_key_names_the_variable() -> None:
    with pytest.raises(UserInputError, match="OPENAI_API_KEY"):
        openai_provider(base_url=None, environ={})
    with pytest.raises(UserInputError, match="AZURE_OPENAI_API_KEY"):
        openai_provider(base_url="https://x.openai.azure.com", kind="azure", environ={})
    with pytest.raises(UserInputError, match="MY_LLM_KEY") as caught:
        openai_provider(base_url=None, api_key_env="MY_LLM_KEY", environ={"OPENAI_API_KEY": SECRET})
    assert SECRET not in str(caught.value)


def test_key_and_settings_come_from_the_environment(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(api_key=SECRET)
    environ = {
        "MY_LLM_KEY": SECRET,
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_ORG_ID": "org-1",
        "OPENAI_PROJECT_ID": "proj-1",
    }
    provider = openai_provider(base_url=None, api_key_env="MY_LLM_KEY", environ=environ)
    try:
        assert provider.name == "openai"
        assert (provider.client.organization, provider.client.project) == ("org-1", "proj-1")
        assert list(provider.batches.find()) == []
    finally:
        provider.close()


def test_compatible_servers_need_no_key(local_server: LocalServer) -> None:
    spec = ProviderSpec(kind="compatible", base_url=local_server.base_url)
    provider = provider_for(spec, state_dir=Path("unused"), environ={})
    try:
        assert isinstance(provider, OpenAIProvider)
        assert provider.name == "compatible"
        assert provider.client.api_key == "not-needed"
        assert provider.batches.find_staged(TAGS, 1) is None
    finally:
        provider.close()


def test_azure_client() -> None:
    provider = openai_provider(
        base_url="https://example.openai.azure.com",
        kind="azure",
        environ={"AZURE_OPENAI_API_KEY": SECRET},
    )
    try:
        assert isinstance(provider.client, openai.AzureOpenAI)
        assert provider.name == "azure"
        assert str(provider.client.base_url) == "https://example.openai.azure.com/openai/"
        assert provider.client.default_query == {"api-version": "2024-10-21"}
        assert provider.client.api_key == SECRET
    finally:
        provider.close()


# the local provider -------------------------------------------------------------------------


def test_local_provider_reports_a_missing_model(tmp_path: Path) -> None:
    spec = ProviderSpec(kind="local", model_path=str(tmp_path / "missing.gguf"))
    with pytest.raises(MissingDependency, match=r"missing\.gguf"):
        provider_for(spec, state_dir=tmp_path)


@pytest.mark.llama
def test_local_provider_runs_a_batch_with_the_model(tmp_path: Path) -> None:
    provider = provider_for(ProviderSpec(kind="local"), state_dir=tmp_path)
    try:
        assert isinstance(provider, LocalProvider)
        assert (tmp_path / "local-server").is_dir()
        path = tmp_path / "input.jsonl"
        path.write_bytes(
            jsonl(chat_line(f"r{i}", "Say hello.", model="smollm2", max_tokens=16) for i in (1, 2))
        )
        batch = wait_terminal(provider, provider.batches.submit(path, CHAT, TAGS).id, 120.0)
        assert batch.status is RemoteStatus.COMPLETED
        assert (batch.completed, batch.failed) == (2, 0)
    finally:
        provider.close()
