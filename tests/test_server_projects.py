"""Each API key is its own project: it sees, reads, cancels and deletes only its own objects."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from batchpilot.server import LocalServer, RateLimit
from batchpilot.server.state import _MIGRATIONS

from helpers import chat_line, client_for, read_jsonl, submit, upload, wait_for

KEYS = {"api_key": "sk-alice", "api_keys": ("sk-bob",)}


def test_a_key_sees_only_its_own_files_and_batches(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(**KEYS)
    alice = client_for(server, api_key="sk-alice")
    bob = client_for(server, api_key="sk-bob")
    batch = wait_for(alice, submit(alice, [chat_line("a-1", "hello")]).id)
    assert batch.status == "completed" and batch.output_file_id is not None
    bob_file = upload(bob, [chat_line("b-1", "hi")])

    assert [f.id for f in bob.files.list()] == [bob_file]
    assert list(bob.batches.list()) == []
    assert {f.id for f in alice.files.list()} == {batch.input_file_id, batch.output_file_id}
    assert [b.id for b in alice.batches.list()] == [batch.id]

    for file_id in (batch.input_file_id, batch.output_file_id):
        with pytest.raises(openai.NotFoundError):
            bob.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            bob.files.content(file_id)
        with pytest.raises(openai.NotFoundError):
            bob.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    assert [line["custom_id"] for line in read_jsonl(alice, batch.output_file_id)] == ["a-1"]
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(bob_file)


def test_a_batch_cannot_read_another_keys_input_file(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(**KEYS)
    alice = client_for(server, api_key="sk-alice")
    bob = client_for(server, api_key="sk-bob")
    alice_file = upload(alice, [chat_line("secret", "alice's question")])
    stolen = bob.batches.create(
        input_file_id=alice_file, endpoint="/v1/chat/completions", completion_window="24h"
    )
    stolen = wait_for(bob, stolen.id)
    assert stolen.status == "failed"
    assert stolen.errors is not None and stolen.errors.data is not None
    assert stolen.errors.data[0].param == "file_id"
    assert server.admin.ledger() == []


def test_a_cursor_from_another_project_reveals_nothing(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(**KEYS)
    alice = client_for(server, api_key="sk-alice")
    bob = client_for(server, api_key="sk-bob")
    alice_file = upload(alice, [chat_line("x", "y")])
    bob_files = [upload(bob, [chat_line(f"b{i}", "z")]) for i in range(2)]
    assert [f.id for f in bob.files.list(after=alice_file)] == bob_files[::-1]


def test_the_ledger_shows_each_key_its_own_work(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(**KEYS)
    alice = client_for(server, api_key="sk-alice")
    bob = client_for(server, api_key="sk-bob")
    wait_for(alice, submit(alice, [chat_line("a-batch", "q")]).id)
    bob.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "q"}],
        extra_headers={"x-batchpilot-custom-id": "b-live"},
    )

    def ledger(key: str) -> list[str]:
        response = httpx.get(
            server.base_url.removesuffix("/v1") + "/_batchpilot/ledger",
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200
        return [row["custom_id"] for row in response.json()]

    assert ledger("sk-alice") == ["a-batch"]
    assert ledger("sk-bob") == ["b-live"]
    assert [row["custom_id"] for row in server.admin.ledger()] == ["a-batch", "b-live"]
    assert "owner" not in server.admin.ledger()[0]


def test_a_wrong_key_is_refused(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(**KEYS)
    with pytest.raises(openai.AuthenticationError) as info:
        client_for(server, api_key="sk-mallory").files.list()
    assert info.value.code == "invalid_api_key"
    assert "sk-" not in info.value.message


def _outward_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_without_keys_only_loopback_clients_are_answered(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    server = local_server_factory(host="0.0.0.0")
    local = httpx.get(f"http://127.0.0.1:{server.port}/v1/models")
    assert local.status_code == 200
    outside = httpx.get(f"http://{address}:{server.port}/v1/models")
    assert outside.status_code == 403
    assert outside.json()["error"]["code"] == "loopback_only"

    keyed = local_server_factory(host="0.0.0.0", api_key="sk-alice")
    answered = httpx.get(
        f"http://{address}:{keyed.port}/v1/models", headers={"Authorization": "Bearer sk-alice"}
    )
    assert answered.status_code == 200


def test_state_from_before_projects_is_upgraded(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    with sqlite3.connect(tmp_path / "server.sqlite3") as conn:
        conn.executescript(_MIGRATIONS[0])
        conn.execute(
            "INSERT INTO files(id, filename, purpose, bytes, created_at) "
            "VALUES ('file-old', 'old.jsonl', 'batch', 2, 1)"
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "file-old").write_bytes(b"{}")
    server = local_server_factory(state_dir=tmp_path)
    client = client_for(server)
    assert [f.id for f in client.files.list()] == ["file-old"]
    assert client.files.content("file-old").read() == b"{}"


def test_each_key_has_its_own_rate_limits(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(
        time_scale=1e-9, rate_limits={"gpt-4o-mini": RateLimit(rpm=1)}, **KEYS
    )
    alice = client_for(server, api_key="sk-alice")
    bob = client_for(server, api_key="sk-bob")
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    alice.chat.completions.create(**ask)
    with pytest.raises(openai.RateLimitError):
        alice.chat.completions.create(**ask)
    assert bob.chat.completions.create(**ask).choices


def test_each_key_has_its_own_queue_limit(local_server_factory: Callable[..., LocalServer]) -> None:
    # each line counts 12 tokens: one batch of four (48) fits under 60, a second would not
    server = local_server_factory(
        time_scale=1e-9, validation_delay_s=10.0, queue_limits={"gpt-4o-mini": 60}, **KEYS
    )
    alice = client_for(server, api_key="sk-alice")
    bob = client_for(server, api_key="sk-bob")
    lines = [chat_line(f"q{i}", "one two three four five") for i in range(4)]
    first = submit(alice, lines)
    wait_for(alice, first.id, statuses={"validating"})
    deadline = time.monotonic() + 20
    while server.state.get_batch(first.id)["admitted"] != 1:  # type: ignore[index]
        assert time.monotonic() < deadline, "the first batch was never admitted"
        time.sleep(0.01)
    second = submit(bob, lines)
    server.admin.advance(10)
    assert wait_for(bob, second.id, statuses={"in_progress", "failed"}).status == "in_progress"
