"""A server killed with SIGKILL in the middle of a batch continues it after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from helpers import (
    answers,
    by_custom_id,
    chat_line,
    client_for,
    free_port,
    read_jsonl,
    submit,
    wait_for,
)


def start(state: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "batchpilot",
        "serve",
        "--port",
        str(port),
        "--state",
        str(state),
        "--tokens-per-second",
        "60",
        "--validation-delay",
        "0",
        "--finalizing-delay",
        "0",
    ]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if answers(f"http://127.0.0.1:{port}/_batchpilot/health"):
            return process
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError("server did not start: " + log.read_text())


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_continues(tmp_path: Path) -> None:
    port, state, log = free_port(), tmp_path / "state", tmp_path / "server.log"
    server = start(state, port, log)
    client = client_for(f"http://127.0.0.1:{port}/v1")
    try:
        lines = [chat_line(f"r{i:02d}", f"question number {i}") for i in range(24)]
        batch = submit(client, lines)
        deadline = time.monotonic() + 20
        while client.batches.retrieve(batch.id).request_counts.completed < 4:
            assert time.monotonic() < deadline, "no progress before the kill"
            time.sleep(0.05)
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait()

    server = start(state, port, log)
    try:
        status = client.batches.retrieve(batch.id)
        assert status.status == "in_progress"
        assert 4 <= status.request_counts.completed < 24
        final = wait_for(client, batch.id, timeout=60)
        assert final.status == "completed"
        assert final.request_counts.completed == 24
        output = by_custom_id(read_jsonl(client, final.output_file_id))
        assert sorted(output) == [f"r{i:02d}" for i in range(24)]
        ledger = httpx.get(f"http://127.0.0.1:{port}/_batchpilot/ledger").json()
        counts = Counter(row["custom_id"] for row in ledger)
        assert counts == Counter({f"r{i:02d}": 1 for i in range(24)})
    finally:
        server.terminate()
        server.wait(timeout=30)
