"""Crash injection: `batchpilot run` is SIGKILLed at random moments, then run again.

The final export must equal an uninterrupted run's; the server's ledger must show every request
executed exactly as often as the store recorded attempts (nothing paid twice); and no local
batch may exist twice at the provider.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml
from google import genai
from google.genai import types

from batchpilot.providers.gemini_batch import tags_of
from batchpilot.run import open_store

from helpers import run_command, serve_process

pytestmark = pytest.mark.slow

ROWS = 80
FAULTS = {
    "seed": 11,
    "faults": [
        {"kind": "line_error", "status": 429, "rate": 0.15},
        {"kind": "line_error", "status": 500, "rate": 0.1},
        {"kind": "not_found_after_create", "calls": 1},
        {"kind": "http_error", "route": "GET /v1/batches/*", "status": 503, "rate": 0.05},
    ],
}


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    faults = directory / "faults.yaml"
    faults.write_text(yaml.safe_dump(FAULTS))
    process, root = serve_process(
        directory,
        *("--faults", str(faults), "--time-scale", "8", "--validation-delay", "2"),
        *("--finalizing-delay", "2", "--tokens-per-second", "40"),
    )
    return process, f"{root}/v1"


def write_job(directory: Path, base_url: str, **changes: Any) -> Path:
    kind = changes.pop("kind", "compatible")
    rows = [{"id": f"r{i:02d}", "text": f"Item number {i} of the crash test"} for i in range(ROWS)]
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = {
        "name": "crash",
        "provider": {"kind": kind, "base_url": base_url},
        "model": {"anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}.get(
            kind, "gpt-4o-mini"
        ),
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 16},
        "limits": {"requests_per_batch": 5, "queue_tokens": 1_000_000, "max_attempts": 5},
        "output": {"path": "out.jsonl"},
        **changes,
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def comparable(path: Path, attempts: bool = True) -> list[tuple[Any, ...]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        (r["id"], r["status"], json.dumps(r["output"]), r["attempts"] if attempts else None)
        for r in lines
    ]


def remote_tags(base_url: str, run_id: str) -> Counter[str | None]:
    """How many remote batches carry each local batch id of the run."""
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=5)
    try:
        return Counter(
            (b.metadata or {}).get("batchpilot_batch")
            for b in client.batches.list(limit=100)
            if (b.metadata or {}).get("batchpilot_run") == run_id
        )
    finally:
        client.close()


def check_ledger_and_remote(base_url: str, state: Path) -> None:
    ledger = httpx.get(base_url.removesuffix("/v1") + "/_batchpilot/ledger").json()
    executed = Counter(row["custom_id"] for row in ledger)
    store = open_store(state)
    (run,) = store.runs()
    recorded = Counter(a.request_id for a in store.attempts(run.id) if a.lane == "batch")
    batches = store.batches(run.id)
    store.close()
    assert executed == recorded, "the ledger and the store disagree on executions"
    tags = remote_tags(base_url, run.id)
    assert tags, "no remote batches carry the run's tags"
    assert max(tags.values()) == 1, f"a local batch was created twice remotely: {tags}"
    assert len(tags) == sum(1 for b in batches if b.remote_id is not None)


def run_with_kills(
    tmp_path: Path,
    rng: random.Random,
    check: Callable[[str, Path], None],
    attempts: bool = True,
    **changes: Any,
) -> None:
    """An uninterrupted run, then the same job SIGKILLed at random points and run again until
    it finishes, each on its own server: the exports must be equal (their attempt counts too,
    with `attempts`), and `check(base URL, state)` passes for both while their servers run."""
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    servers = []
    try:
        server, url = start_server(reference_dir)
        servers.append(server)
        job = write_job(reference_dir, url, **changes)
        started = time.monotonic()
        done = subprocess.run(
            run_command(job, reference_dir / "state"), capture_output=True, timeout=300
        )
        assert done.returncode == 0, done.stderr.decode()
        reference_seconds = time.monotonic() - started
        expected = comparable(reference_dir / "out.jsonl", attempts)
        check(url, reference_dir / "state")

        # A run may go faster than the reference did (a busy machine slowed the reference):
        # one that finishes before its third kill is run again from the start, killed sooner.
        scale = 1.0
        for trial in range(3):
            crash_dir = tmp_path / f"crash-{trial}"
            crash_dir.mkdir()
            server, url = start_server(crash_dir)
            servers.append(server)
            job = write_job(crash_dir, url, **changes)
            kills = 0
            while True:
                command = run_command(job, crash_dir / "state")
                process = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                # Kill somewhere inside a run's length as measured above (the first three early
                # enough that each still finds work left); after eight kills it may finish.
                longest = 0.3 if kills < 3 else 0.45
                window = None
                if kills < 8:
                    window = rng.uniform(0.1, longest) * reference_seconds * scale
                try:
                    _, stderr = process.communicate(timeout=window)
                    assert process.returncode == 0, stderr.decode()
                    break
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.communicate()
                    kills += 1
            if kills >= 3:
                break
            scale /= 2
        assert kills >= 3, "too few crashes to mean anything; lower the kill delays"
        assert comparable(crash_dir / "out.jsonl", attempts) == expected
        check(url, crash_dir / "state")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def test_sigkill_at_random_points_reaches_the_same_result(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("BATCHPILOT_CRASH_SEED", "5")))
    run_with_kills(tmp_path, rng, check_ledger_and_remote)


def check_both_lanes(base_url: str, state: Path) -> None:
    """Every execution the server saw is an attempt in the store (a real-time request killed
    on the wire is recovered as one), and batches were never created twice."""
    ledger = httpx.get(base_url.removesuffix("/v1") + "/_batchpilot/ledger").json()
    executed = Counter(row["custom_id"] for row in ledger)
    store = open_store(state)
    (run,) = store.runs()
    recorded = Counter(a.request_id for a in store.attempts(run.id) if a.lane != "cache")
    lanes = {row.lane for row in store.joined_rows(run.id) if row.lane is not None}
    counts = store.request_counts(run.id)
    store.close()
    assert executed, "nothing ran"
    assert all(executed[key] <= recorded[key] for key in executed), "an execution went unrecorded"
    assert lanes == {"batch", "realtime"}, lanes
    assert counts["succeeded"] == ROWS
    tags = remote_tags(base_url, run.id)
    assert tags and max(tags.values()) == 1, f"a local batch was created twice remotely: {tags}"


def test_sigkill_in_a_hybrid_run_reaches_the_same_result(tmp_path: Path) -> None:
    # small queue waves of ~5 requests a second against 60 real-time requests a minute: both
    # lanes are busy when a kill comes. Which lane answers a request (and so how many tries
    # its faults take) depends on timing: attempts are not compared.
    rng = random.Random(int(os.environ.get("BATCHPILOT_CRASH_SEED", "5")) + 1)
    run_with_kills(
        tmp_path,
        rng,
        check_both_lanes,
        attempts=False,
        strategy="hybrid",
        realtime={"rpm": 60, "concurrency": 4},
        estimate={"batch_turnaround_hours": 0.0003},
        limits={"requests_per_batch": 5, "queue_tokens": 100, "max_attempts": 5},
    )


def check_executions(base_url: str, state: Path) -> tuple[str, set[str]]:
    """Every execution in the server's ledger is a batch attempt in the store; the run's id and
    the remote ids of its batches, for the provider's own checks."""
    ledger = httpx.get(base_url.removesuffix("/v1") + "/_batchpilot/ledger").json()
    executed = Counter(row["custom_id"] for row in ledger)
    store = open_store(state)
    (run,) = store.runs()
    recorded = Counter(a.request_id for a in store.attempts(run.id) if a.lane == "batch")
    made = {b.remote_id for b in store.batches(run.id) if b.remote_id is not None}
    store.close()
    assert executed == recorded, "the ledger and the store disagree on executions"
    return run.id, made


def check_anthropic(base_url: str, state: Path) -> None:
    """As `check_ledger_and_remote`, for message batches (which carry no tags): every
    execution is an attempt in the store, and no local batch has two remote batches."""
    _, made = check_executions(base_url, state)
    client = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key="x")
    try:
        remote = [b.id for b in client.messages.batches.list(limit=100)]
    finally:
        client.close()
    assert remote and len(remote) == len(set(remote))
    assert set(remote) == made, "a message batch was created that the store does not know"


def test_sigkill_on_anthropic_reaches_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-local")
    rng = random.Random(int(os.environ.get("BATCHPILOT_CRASH_SEED", "5")) + 2)
    run_with_kills(tmp_path, rng, check_anthropic, kind="anthropic")


def check_gemini(base_url: str, state: Path) -> None:
    """As `check_ledger_and_remote`, for Gemini batches (tagged by their display names): every
    execution is an attempt in the store, and no local batch has two remote batches."""
    run_id, made = check_executions(base_url, state)
    options = types.HttpOptions(base_url=base_url.removesuffix("/v1"), api_version="v1beta")
    client = genai.Client(api_key="x", http_options=options)
    try:
        jobs = list(client.batches.list(config={"page_size": 100}))
    finally:
        client.close()
    found = [tags_of(job.display_name) for job in jobs]
    tags = Counter(t.batch_id for t in found if t is not None and t.run_id == run_id)
    assert tags and max(tags.values()) == 1, f"a local batch was created twice remotely: {tags}"
    assert {job.name for job in jobs} == made, "a batch was created that the store does not know"


def test_sigkill_on_gemini_reaches_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-local")
    rng = random.Random(int(os.environ.get("BATCHPILOT_CRASH_SEED", "5")) + 3)
    run_with_kills(tmp_path, rng, check_gemini, kind="gemini")
