"""Upload size and per-project storage limits: refused in the API's envelope, streamed to disk."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from batchpilot.server import LocalServer

from helpers import client_for

KEYS = {"api_key": "sk-alice", "api_keys": ("sk-bob",)}


def stored_files(server: LocalServer) -> list[str]:
    return sorted(p.name for p in server.state.files_dir.iterdir())


def test_storage_is_limited_per_key(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(max_storage_bytes=1000, **KEYS)
    alice = client_for(server, api_key="sk-alice")
    bob = client_for(server, api_key="sk-bob")
    first = alice.files.create(file=("a.jsonl", io.BytesIO(b"{" + b"a" * 599)), purpose="batch")

    with pytest.raises(openai.BadRequestError) as info:
        alice.files.create(file=("b.jsonl", io.BytesIO(b"{" + b"b" * 599)), purpose="batch")
    assert info.value.code == "storage_limit_exceeded"
    assert "1000 bytes" in info.value.message
    assert stored_files(server) == [first.id]

    bob.files.create(file=("c.jsonl", io.BytesIO(b"{" + b"c" * 599)), purpose="batch")
    alice.files.delete(first.id)
    alice.files.create(file=("d.jsonl", io.BytesIO(b"{" + b"d" * 599)), purpose="batch")


def multipart_chunks(boundary: str, size: int) -> Iterator[bytes]:
    """A multipart upload sent in chunks without a content-length."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield b"{" + b"x" * 999
    for _ in range(size // 1000 - 1):
        yield b"x" * 1000
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("limit", ["max_storage_bytes", "max_upload_bytes"])
def test_a_streamed_upload_over_a_limit_stops_and_leaves_nothing(
    local_server_factory: Callable[..., LocalServer], limit: str
) -> None:
    server = local_server_factory(**{limit: 50_000})
    response = httpx.post(
        f"{server.base_url}/files",
        content=multipart_chunks("bound", 200_000),
        headers={"content-type": "multipart/form-data; boundary=bound"},
    )
    assert response.status_code in (400, 413)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert stored_files(server) == []
    assert list(client_for(server).files.list()) == []


def test_a_streamed_upload_within_the_limits_is_stored(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(max_storage_bytes=300_000)
    response = httpx.post(
        f"{server.base_url}/files",
        content=multipart_chunks("bound", 200_000),
        headers={"content-type": "multipart/form-data; boundary=bound"},
    )
    assert response.status_code == 200, response.text
    file_id = response.json()["id"]
    assert response.json()["bytes"] == 200_000
    assert client_for(server).files.content(file_id).read() == b"{" + b"x" * 199_999


def test_an_upload_refused_for_its_fields_leaves_nothing(local_server: LocalServer) -> None:
    with pytest.raises(openai.BadRequestError):
        client_for(local_server).files.create(
            file=("notes.csv", io.BytesIO(b"a,b")), purpose="batch"
        )
    assert stored_files(local_server) == []


def test_a_body_that_is_not_multipart_is_refused(local_server: LocalServer) -> None:
    response = httpx.post(f"{local_server.base_url}/files", json={"file": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_bytes_left_by_a_crash_are_removed_on_start(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(state_dir=tmp_path)
    kept = client_for(server).files.create(file=("k.jsonl", io.BytesIO(b"{}")), purpose="batch")
    server.stop()
    (tmp_path / "files" / "file-cutshort").write_bytes(b"x" * 1000)
    (tmp_path / "files" / "file-result.part").write_bytes(b"y" * 1000)

    restarted = local_server_factory(state_dir=tmp_path)
    assert stored_files(restarted) == [kept.id]
    assert client_for(restarted).files.content(kept.id).read() == b"{}"


def test_only_the_file_field_is_taken_as_the_file(local_server: LocalServer) -> None:
    response = httpx.post(
        f"{local_server.base_url}/files",
        files={"data": ("x.jsonl", b"{}")},
        data={"purpose": "batch"},
    )
    assert response.status_code == 400
    assert stored_files(local_server) == []
