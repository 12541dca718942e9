"""Shared helpers for tests that drive the local server through the official SDK."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
from openai.types import Batch

from batchpilot.server import LocalServer
from batchpilot.store.packing import register

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def plot_job(name: str) -> dict[str, Any]:
    """A job on `rows.jsonl` (rows with an `id` and a `plot`) asking who dies, as a dict."""
    return {
        "name": name,
        "provider": {"kind": "openai"},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "Who dies? {{ plot }}"},
        "params": {"max_tokens": 20},
    }


OPEN_CLIENTS: list[openai.OpenAI] = []


def old_store(path: Path, version: int) -> sqlite3.Connection:
    """A store file as batchpilot left it at schema `version` (still open, to fill)."""
    from batchpilot.store.migrations import MIGRATIONS, statements

    db = sqlite3.connect(path)
    register(db)
    for script in MIGRATIONS[:version]:
        for statement in statements(script):
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    return db


def sql(path: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a store's SQLite file through a connection of its own (committed):
    a test's look at, or change to, the raw tables (`unpack(column)` reads a packed value)."""
    with closing(sqlite3.connect(path)) as db, db:
        register(db)
        return db.execute(query, params).fetchall()


def client_for(server: LocalServer | str, **options: Any) -> openai.OpenAI:
    """An SDK client for a server (or base URL); closed after the test by conftest. Its HTTP
    client is the SDK's default one without certificates, which plain HTTP does not need and
    which take longer to load than most tests take to run."""
    options.setdefault("max_retries", 0)
    if "http_client" not in options:
        options["http_client"] = openai.DefaultHttpxClient(verify=False)
    base_url = server if isinstance(server, str) else server.base_url
    client = openai.OpenAI(base_url=base_url, api_key=options.pop("api_key", "test"), **options)
    OPEN_CLIENTS.append(client)
    return client


def close_clients() -> None:
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


def chat_line(
    custom_id: str, content: str, model: str = "gpt-4o-mini", **body: Any
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(lines: Iterable[dict[str, Any] | str]) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()


def upload(
    client: openai.OpenAI, lines: Iterable[dict[str, Any] | str], name: str = "input.jsonl"
) -> str:
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch").id


def submit(
    client: openai.OpenAI,
    lines: Iterable[dict[str, Any] | str],
    endpoint: str = "/v1/chat/completions",
    metadata: dict[str, str] | None = None,
) -> Batch:
    file_id = upload(client, lines)
    return client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata,
    )


def wait_for(
    client: openai.OpenAI, batch_id: str, statuses: set[str] = TERMINAL, timeout: float = 30.0
) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} stuck in {batch.status}")
        time.sleep(0.02)


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["custom_id"]: line for line in lines}


# Ports handed to processes that tests start: below Linux's range for outgoing connections
# (32768 and up), so that no client's socket takes one before the process listens on it.
_PORTS = (20000, 32000)


def free_port() -> int:
    """A loopback port free now, for a process started next to listen on. Each pytest-xdist
    worker draws from a slice of `_PORTS` of its own, so two workers never hand out the same
    port between the draw here and the listen there."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    span = (_PORTS[1] - _PORTS[0]) // workers
    low = _PORTS[0] + worker * span
    for _ in range(1000):
        port = random.randrange(low, low + span)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {low}-{low + span - 1}")


def open_files_under(place: Path) -> list[str]:
    """The files this process holds open whose path starts with `place` (a directory, or a
    file with its companions: a store with its -wal and -shm)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed while listed
        if target.startswith(str(place.resolve())):
            found.append(target)
    return found


def run_command(job: Path, state: Path, *extra: str) -> list[str]:
    """`batchpilot run JOB` as a separate process would be started, quiet and polling fast;
    requests that fail for good are the caller's to check."""
    command = [sys.executable, "-m", "batchpilot", "run", str(job), "--state", str(state)]
    return [*command, "--quiet", "--poll-interval", "0.05", "--allow-failures", *extra]


def answers(url: str) -> bool:
    """Whether a plain-HTTP GET of `url` gets an answer: a process started by a test polls with
    it until it listens. Its client loads no TLS certificates, which would cost more than the
    request (and slow the starting process it polls)."""
    with httpx.Client(verify=False, timeout=1) as probe:
        try:
            probe.get(url)
        except httpx.TransportError:
            return False
    return True


def serve_process(directory: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """`batchpilot serve` as its own process, state in `directory / "server"`, once it answers;
    returns the process and the server's root URL (without `/v1`)."""
    port = free_port()
    command = [sys.executable, "-m", "batchpilot", "serve", "--port", str(port)]
    command += ["--state", str(directory / "server"), *flags]
    with (directory / "server.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if answers(f"http://127.0.0.1:{port}/_batchpilot/health"):
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    raise AssertionError("server did not start")


class LoseAnswers(httpx2.BaseTransport):
    """Forward every call, but lose the answer to the first `count` POSTs to a path ending in
    `suffix` (every one with `count=None`): the server did the work, the client saw a timeout."""

    def __init__(self, suffix: str, count: int | None = None) -> None:
        self._inner = httpx2.HTTPTransport()
        self.suffix = suffix
        self.left = count

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        lose = self.left is None or self.left > 0
        if request.method == "POST" and request.url.path.endswith(self.suffix) and lose:
            if self.left is not None:
                self.left -= 1
            response.read()
            response.close()
            raise httpx2.ReadTimeout("the answer was lost", request=request)
        return response

    def close(self) -> None:
        self._inner.close()


def engine_moves_new_batches_on_at_once(
    server: LocalServer, monkeypatch: Any, until: frozenset[str] = frozenset()
) -> None:
    """Let the server's engine advance every batch the moment its create has stored it, before
    the create has answered: past validating, or until its status is one of `until`. The race
    a server at a high time scale can lose at any time."""
    insert = server.state.insert_batch

    def moved(status: str) -> bool:
        return status in until if until else status != "validating"

    def insert_then_advance(values: dict[str, Any]) -> Any:
        row = insert(values)
        deadline = time.monotonic() + 20
        # the engine's own thread moves it, as it would: a second hand on it here would race
        while (after := server.state.get_batch(str(values["id"]))) is None or not moved(
            after["status"]
        ):
            assert time.monotonic() < deadline, f"the engine left the batch {after}"
            server.engine.wake()
            time.sleep(0.005)
        return row

    monkeypatch.setattr(server.state, "insert_batch", insert_then_advance)
