"""One contract every provider passes, driven through the official SDK over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from batchpilot.errors import ProviderRejected
from batchpilot.providers import (
    LocalProvider,
    OpenAIProvider,
    Provider,
    RemoteBatch,
    RemoteFile,
    RemoteNotFound,
    RemoteStatus,
    local_provider,
)
from batchpilot.server import LocalServer

from helpers import chat_line, jsonl

ProviderFactory = Callable[..., Provider]

# A batch that stays in progress for a minute: one request per 60 virtual s, one virtual s per s.
SLOW = {"time_scale": 1.0, "validation_delay_s": 0.0, "per_request_s": 60.0, "cancel_delay_s": 0.0}


@pytest.fixture(params=["openai", "local"])
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
        return local_provider(tmp_path / f"local-{len(made)}", responder="synthetic", **settings)

    def factory(**settings: Any) -> Provider:
        build = openai_variant if request.param == "openai" else local_variant
        made.append(build(**settings))
        return made[-1]

    yield factory
    for provider in made:
        provider.close()


@pytest.fixture
def provider(make_provider: ProviderFactory) -> Provider:
    return make_provider()


def write_input(directory: Path, count: int = 3, name: str = "input.jsonl") -> Path:
    path = directory / name
    path.write_bytes(jsonl(chat_line(f"req-{i}", f"question {i}") for i in range(count)))
    return path


def wait_terminal(provider: Provider, batch_id: str, timeout: float = 15.0) -> RemoteBatch:
    deadline = time.monotonic() + timeout
    while not (batch := provider.get_batch(batch_id)).status.terminal:
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {batch.status}"
        time.sleep(0.02)
    return batch


def submit(provider: Provider, tmp_path: Path, count: int = 3, **metadata: str) -> RemoteBatch:
    uploaded = provider.upload(write_input(tmp_path, count), "input.jsonl")
    return provider.create_batch(uploaded.id, "/v1/chat/completions", metadata)


def test_is_a_provider(provider: Provider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name in {"openai", "local"}
    assert isinstance(provider, LocalProvider) == (provider.name == "local")


def test_upload_and_list_files(provider: Provider, tmp_path: Path) -> None:
    path = write_input(tmp_path, name="rows.jsonl")
    uploaded = provider.upload(path, "run-1-batch-1.jsonl")
    assert isinstance(uploaded, RemoteFile)
    assert uploaded.id.startswith("file-")
    assert uploaded.filename == "run-1-batch-1.jsonl"
    assert uploaded.bytes == path.stat().st_size
    assert uploaded.purpose == "batch"
    assert uploaded.created_at > 0
    listed = {item.filename: item for item in provider.list_files()}
    assert listed["run-1-batch-1.jsonl"] == uploaded


def test_batch_lifecycle(provider: Provider, tmp_path: Path) -> None:
    created = submit(provider, tmp_path, run="r1", local_batch="7")
    assert created.status is RemoteStatus.VALIDATING
    assert created.metadata == {"run": "r1", "local_batch": "7"}
    assert created.endpoint == "/v1/chat/completions"

    done = wait_terminal(provider, created.id)
    assert done.status is RemoteStatus.COMPLETED
    assert (done.total, done.completed, done.failed) == (3, 3, 0)
    assert done.output_file_id is not None
    assert done.errors == []
    assert done.model == "gpt-4o-mini"

    target = tmp_path / "out" / "batch-1.jsonl"
    target.parent.mkdir()
    provider.download(done.output_file_id, target)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["req-0", "req-1", "req-2"]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert list(target.parent.iterdir()) == [target]

    tagged = [b for b in provider.list_batches() if b.metadata.get("run") == "r1"]
    assert [b.id for b in tagged] == [created.id]
    assert tagged[0].status is RemoteStatus.COMPLETED


def test_cancel_a_running_batch(make_provider: ProviderFactory, tmp_path: Path) -> None:
    provider = make_provider(**SLOW)
    created = submit(provider, tmp_path, count=4)
    cancelling = provider.cancel_batch(created.id)
    assert cancelling.status in {RemoteStatus.CANCELLING, RemoteStatus.CANCELLED}
    assert wait_terminal(provider, created.id).status is RemoteStatus.CANCELLED
    assert provider.cancel_batch(created.id).status is RemoteStatus.CANCELLED


def test_cancel_a_completed_batch_is_rejected(provider: Provider, tmp_path: Path) -> None:
    batch = wait_terminal(provider, submit(provider, tmp_path).id)
    with pytest.raises(ProviderRejected, match=r"cancelling batch .*409.*completed") as caught:
        provider.cancel_batch(batch.id)
    assert not isinstance(caught.value, RemoteNotFound)


def test_missing_objects(provider: Provider, tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFound, match="batch_missing"):
        provider.get_batch("batch_missing")
    uploaded = provider.upload(write_input(tmp_path), "input.jsonl")
    provider.delete_file(uploaded.id)
    target = tmp_path / "gone.jsonl"
    with pytest.raises(RemoteNotFound, match=uploaded.id):
        provider.download(uploaded.id, target)
    assert not target.exists()
    assert not target.with_suffix(".jsonl.part").exists()
    with pytest.raises(RemoteNotFound):
        provider.delete_file(uploaded.id)
    assert uploaded.id not in {item.id for item in provider.list_files()}


def test_batches_are_listed_newest_first(provider: Provider, tmp_path: Path) -> None:
    created = [submit(provider, tmp_path, count=1, n=str(i)).id for i in range(3)]
    listed = [b.id for b in provider.list_batches()]
    assert listed[:3] == created[::-1]


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
        found = [b for b in again.list_batches() if b.metadata.get("run") == "r-restart"]
        assert [b.id for b in found] == [created.id]
        assert found[0].status is RemoteStatus.COMPLETED
        assert found[0].output_file_id is not None
        again.download(found[0].output_file_id, tmp_path / "out.jsonl")
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    finally:
        again.close()
