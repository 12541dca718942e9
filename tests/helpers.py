"""Shared helpers for tests that drive the local server through the official SDK."""

from __future__ import annotations

import io
import json
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import openai
from openai.types import Batch

from batchpilot.server import LocalServer

TERMINAL = {"completed", "failed", "expired", "cancelled"}


OPEN_CLIENTS: list[openai.OpenAI] = []


def client_for(server: LocalServer | str, **options: Any) -> openai.OpenAI:
    """An SDK client for a server (or base URL); closed after the test by conftest."""
    options.setdefault("max_retries", 0)
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_command(job: Path, state: Path, *extra: str) -> list[str]:
    """`batchpilot run JOB` as a separate process would be started, quiet and polling fast."""
    command = [sys.executable, "-m", "batchpilot", "run", str(job), "--state", str(state)]
    return [*command, "--quiet", "--poll-interval", "0.05", *extra]
