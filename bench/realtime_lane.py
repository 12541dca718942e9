"""Benchmark: the real-time lane against the local server, in its own process.

    python bench/realtime_lane.py [--requests 1500] [--concurrency 16] [--rpm 600] [--paced 200]

1. Overhead: requests per second of the lane with limits off, as a ratio to a bare loop of
   `AsyncOpenAI` calls (`client.chat.completions.create`) at the same concurrency, measured in
   the same run against the same server (target: >= 0.95, the median of three rounds' ratios,
   each round running the three loops back to back). The lane sends through the client's
   `post`, which skips the typed wrapper's parameter transform; a second reference, a bare loop
   of that same `post` call, shows what the lane's own work (a store commit as each request
   is taken and as it ends, the throttle) costs.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import orjson

from batchpilot.lanes import RateLimits, RealtimeLane, Throttle
from batchpilot.plan.ids import canonical_body, request_id
from batchpilot.providers.openai_realtime import OpenAIRealtime
from batchpilot.run.ingest import RetryPolicy
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


async def bare(
    client: openai.AsyncOpenAI, items: list[dict[str, Any]], concurrency: int, same_call: bool
) -> float:
    """Requests per second of a plain worker loop: typed SDK calls, or the lane's `post`."""
    queue = iter(items)

    async def worker() -> None:
        for body in queue:
            if same_call:
                raw = await client.post("/chat/completions", cast_to=httpx2.Response, body=body)
                orjson.loads(raw.content)
            else:
                await client.chat.completions.create(**body)

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
            OpenAIRealtime(client),
            store,
            RUN,
            limits=limits,
            concurrency=concurrency,
            retry=RetryPolicy(),
            throttle=throttle,
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
                await client.chat.completions.create(**body)
                sent += 1
            except openai.RateLimitError as exc:
                seen.append(exc.response.headers)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent, seen[0]


async def overhead(
    base_url: str, count: int, concurrency: int, rounds: int
) -> list[dict[str, float]]:
    """Requests per second of each loop, one dict per round."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    measured: list[dict[str, float]] = []
    try:
        await bare(client, bodies(min(200, count), "warm-up"), concurrency, same_call=False)
        for round_ in range(rounds):
            rates: dict[str, float] = {}
            for kind in ("bare", "post", "lane"):
                items = bodies(count, f"{kind} {round_}")
                if kind == "lane":
                    rates[kind], _ = await lane(client, items, concurrency, RateLimits())
                else:
                    rates[kind] = await bare(client, items, concurrency, same_call=kind == "post")
            measured.append(rates)
        return measured
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
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--paced", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with server(Path(tmp) / "free") as url:
            rounds = asyncio.run(
                overhead(url, args.requests, args.concurrency, max(1, args.rounds))
            )
        print(f"overhead: {args.requests} requests, concurrency {args.concurrency}, limits off")
        print(f"  {'round':>5} {'create loop':>12} {'post loop':>10} {'lane':>8} {'lane/bare':>10}")
        for number, rates in enumerate(rounds, 1):
            print(
                f"  {number:>5} {rates['bare']:10.0f}/s {rates['post']:8.0f}/s "
                f"{rates['lane']:6.0f}/s {rates['lane'] / rates['bare']:10.2f}"
            )
        to_bare = statistics.median(r["lane"] / r["bare"] for r in rounds)
        to_post = statistics.median(r["lane"] / r["post"] for r in rounds)
        print(f"  ratio lane/bare = {to_bare:.2f}, median of {len(rounds)} rounds (target >= 0.95)")
        print(f"  ratio lane/post = {to_post:.2f} (the lane's own work)")
        limit = f"{MODEL}=rpm:{args.rpm}"
        with server(Path(tmp) / "limited", "--rate-limit", limit) as url:
            drained, achieved, answered_429 = asyncio.run(
                pacing(url, args.rpm, args.paced, args.concurrency)
            )
        print(f"pacing: --rate-limit {limit}, drained by {drained} bare requests first")
        print(f"  {args.paced} requests at {achieved:.0f} RPM")
        print(f"  share of the limit = {achieved / args.rpm:.1%} (target >= 95%)")
        print(f"  answers 429 = {answered_429} (target 0)")


if __name__ == "__main__":
    main()
