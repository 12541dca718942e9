"""The Files API of the local server, through the official SDK over real HTTP."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import openai
import pytest

from batchpilot.server import LocalServer

from helpers import chat_line, client_for, jsonl, upload, wait_for


def test_upload_retrieve_content_delete(local_server: LocalServer) -> None:
    client = client_for(local_server)
    data = jsonl([{"a": 1}, {"b": 2}])
    created = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.id.startswith("file-")
    assert created.bytes == len(data)
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert created.expires_at == created.created_at + 30 * 86400

    assert client.files.retrieve(created.id).filename == "in.jsonl"
    assert client.files.content(created.id).read() == data

    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(created.id)
    assert "No such File object" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)


def test_other_purposes_do_not_expire(local_server: LocalServer) -> None:
    client = client_for(local_server)
    created = client.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="user_data")
    assert created.expires_at is None


def test_expires_after_is_honoured(local_server: LocalServer) -> None:
    client = client_for(local_server)
    created = client.files.create(
        file=("in.jsonl", io.BytesIO(b"{}")),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert created.expires_at == created.created_at + 7200


def test_batch_purpose_requires_jsonl(local_server: LocalServer) -> None:
    client = client_for(local_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.csv", io.BytesIO(b"a,b")), purpose="batch")
    assert ".jsonl" in info.value.message


def test_unknown_purpose_is_rejected(local_server: LocalServer) -> None:
    response = httpx.post(
        f"{local_server.base_url}/files",
        files={"file": ("x.jsonl", b"{}")},
        data={"purpose": "nonsense"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "purpose"


def test_list_paginates_with_cursor(local_server: LocalServer) -> None:
    client = client_for(local_server)
    ids = [upload(client, [{"n": n}], name=f"f{n}.jsonl") for n in range(7)]
    first = client.files.list(limit=3)
    assert [f.id for f in first.data] == ids[::-1][:3]
    assert first.has_more is True
    assert [f.id for f in client.files.list(limit=3)] == ids[::-1]
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids
    assert list(client.files.list(purpose="user_data")) == []


@pytest.mark.parametrize("bad_id", ["..", "file-../../etc/passwd", "%2e%2e%2fserver.sqlite3"])
def test_file_ids_cannot_reach_outside_the_state_directory(
    local_server: LocalServer, bad_id: str
) -> None:
    response = httpx.get(f"{local_server.base_url}/files/{bad_id}/content")
    assert response.status_code == 404
    assert b"SQLite" not in response.content


def test_oversized_upload_gets_413(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(max_upload_bytes=1000)
    client = client_for(server)
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 5000)), purpose="batch")
    assert info.value.status_code == 413


def test_chunked_oversized_body_gets_413(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(max_json_bytes=100)

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "gpt-4o-mini", "messages": ['
        yield b'{"role": "user", "content": "' + b"x" * 500 + b'"}]}'

    response = httpx.post(f"{server.base_url}/chat/completions", content=chunks())
    assert response.status_code == 413
    assert "limit is 100 bytes" in response.json()["error"]["message"]


def test_api_key_is_required_when_configured(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(api_key="sk-local-secret")
    with pytest.raises(openai.AuthenticationError) as info:
        client_for(server, api_key="wrong").files.list()
    assert "sk-local-secret" not in str(info.value.body)
    assert list(client_for(server, api_key="sk-local-secret").files.list()) == []
    assert httpx.get(server.base_url.removesuffix("/v1") + "/_batchpilot/ledger").status_code == 401


def test_any_upload_name_is_accepted_for_jsonl_content(local_server: LocalServer) -> None:
    client = client_for(local_server)
    created = client.files.create(file=jsonl([chat_line("a", "q")]), purpose="batch")
    assert created.filename == "upload"
    batch = wait_for(
        client,
        client.batches.create(
            input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert batch.status == "completed"


@pytest.mark.parametrize("content", [b"a,b\n1,2\n", b"\x00\x01{", b"\xff\xfe{}"])
def test_batch_uploads_that_are_not_jsonl_are_refused(
    local_server: LocalServer, content: bytes
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client_for(local_server).files.create(file=("in.jsonl", content), purpose="batch")
    assert info.value.code == "invalid_file_format"
    assert ".jsonl" in info.value.message
