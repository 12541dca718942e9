"""Benchmark: the real-time lane against the local server, in its own process.

    python bench/realtime_lane.py [--requests 2000] [--concurrency 16] [--rpm 600] [--paced 200]

1. Overhead: requests per second of the lane (store writes, throttle, budget bookkeeping) with
   limits off, as a ratio to a bare loop of the same `AsyncOpenAI` calls at the same
   concurrency, measured in the same run against the same server (target: >= 0.9). Best of two
   rounds each.
2. Pacing: a server limited to `--rpm` requests per minute (time scale 1) is first drained by a
   bare loop until it answers 429; the lane, told what that answer's `x-ratelimit-*` headers
   say, then sends `--paced` requests with the same limit. Reported: the RPM it achieved as a
   share of the limit (target: >= 95%) and the 429 answers it received (target: none).

The server is `python -m batchpilot serve` on a free port, so it does not share this process's
interpreter lock.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

from batchpilot.lanes import RateLimits, RealtimeLane, Throttle
from batchpilot.plan.ids import canonical_body, request_id
from batchpilot.store import RunRecord, SQLiteStore, utc_now

MODEL = "gpt-4o-mini"
EP = "/v1/chat/completions"
RUN = "bench"


def bodies(count: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"{tag} question {i}: name a colour."}],
            "max_tokens": 16,
        }
        for i in range(count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(state: Path, *flags: str) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "batchpilot", "serve", "--port", str(port)]
    command += ["--state", str(state), "--time-scale", "1", *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{root}/_batchpilot/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {' '.join(command)}")
            time.sleep(0.05)
        yield f"{root}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def make_store(directory: Path, items: list[dict[str, Any]]) -> SQLiteStore:
    store = SQLiteStore(directory / "runs.db")
    store.create_run(RunRecord(RUN, "bench", "{}", "openai", EP, "running", None, utc_now()))
    with store.tx():
        for index, body in enumerate(items):
            canonical = canonical_body(body)
            rid = request_id(EP, canonical)
            store.add_row(RUN, index, f"row-{index}", "bench", rid, None)
            digest = hashlib.sha256(canonical).hexdigest()
            store.add_request(RUN, rid, digest, EP, MODEL, canonical, 20, 16, index)
    return store


async def bare(client: openai.AsyncOpenAI, items: list[dict[str, Any]], concurrency: int) -> float:
    """Requests per second of a plain worker loop making the lane's SDK call."""
    queue = iter(items)

    async def worker() -> None:
        for body in queue:
            raw = await client.chat.completions.with_raw_response.create(**body)
            orjson.loads(raw.content)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(items) / (time.perf_counter() - started)


async def lane(
    client: openai.AsyncOpenAI,
    items: list[dict[str, Any]],
    concurrency: int,
    limits: RateLimits,
    headers: Mapping[str, str] | None = None,
) -> tuple[float, int]:
    """Requests per second of the lane, and the 429 answers it received."""
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), items)
        throttle = Throttle(limits)
        if headers is not None:
            throttle.observe(headers)
        worker = RealtimeLane(
            client, store, RUN, limits=limits, concurrency=concurrency, throttle=throttle
        )
        pending = store.pending(RUN, len(items))
        started = time.perf_counter()
        report = await worker.run(pending)
        rate = len(items) / (time.perf_counter() - started)
        store.close()
    if report.succeeded != len(items):
        raise SystemExit(f"the lane did not answer every request: {report}")
    return rate, report.http_429


async def drain(client: openai.AsyncOpenAI, concurrency: int) -> tuple[int, Mapping[str, str]]:
    """Send until the server answers 429; returns how many went through and the 429's headers."""
    sent = 0
    seen: list[Mapping[str, str]] = []

    async def worker() -> None:
        nonlocal sent
        while not seen:
            body = bodies(1, f"drain {sent}")[0]
            try:
                await client.chat.completions.with_raw_response.create(**body)
                sent += 1
            except openai.RateLimitError as exc:
                seen.append(exc.response.headers)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent, seen[0]


async def overhead(base_url: str, count: int, concurrency: int) -> tuple[float, float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    try:
        await bare(client, bodies(200, "warm-up"), concurrency)
        bare_best = lane_best = 0.0
        for round_ in range(2):
            bare_best = max(bare_best, await bare(client, bodies(count, f"b{round_}"), concurrency))
            rate, _ = await lane(client, bodies(count, f"l{round_}"), concurrency, RateLimits())
            lane_best = max(lane_best, rate)
        return bare_best, lane_best
    finally:
        await client.close()


async def pacing(base_url: str, rpm: int, count: int, concurrency: int) -> tuple[int, float, int]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    try:
        drained, headers = await drain(client, concurrency)
        rate, answered_429 = await lane(
            client, bodies(count, "paced"), concurrency, RateLimits(rpm=rpm), headers
        )
        return drained, rate * 60, answered_429
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--paced", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with server(Path(tmp) / "free") as url:
            bare_rate, lane_rate = asyncio.run(overhead(url, args.requests, args.concurrency))
        print(f"overhead: {args.requests} requests, concurrency {args.concurrency}, limits off")
        print(f"  bare AsyncOpenAI loop  {bare_rate:8.0f} req/s")
        print(f"  real-time lane         {lane_rate:8.0f} req/s")
        print(f"  ratio lane/bare = {lane_rate / bare_rate:.2f} (target >= 0.9)")
        limit = f"{MODEL}=rpm:{args.rpm}"
        with server(Path(tmp) / "limited", "--rate-limit", limit) as url:
            drained, achieved, answered_429 = asyncio.run(
                pacing(url, args.rpm, args.paced, args.concurrency)
            )
        print(f"pacing: --rate-limit {limit}, drained by {drained} bare requests first")
        print(f"  {args.paced} requests at {achieved:.0f} RPM = {achieved / args.rpm:.1%} of the")
        print(f"  limit (target >= 95%), {answered_429} answers 429 (target 0)")


if __name__ == "__main__":
    main()
