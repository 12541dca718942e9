"""Benchmark: real-time chat completions per second against the synthetic responder.

    python bench/server_realtime.py [--requests 3000] [--concurrency 32]

The reference, measured in the same run on the same server, is the framework alone answering a
bare echo of the same body (`/_batchpilot/echo`). Reported: both rates and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from batchpilot.server import LocalServer, ServerConfig

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something short."}]}


async def hammer(url: str, requests: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                response = await client.post(url, json=BODY)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalServer(ServerConfig(state_dir=Path(tmp))) as server,
    ):
        root = server.base_url.removesuffix("/v1")
        asyncio.run(hammer(f"{root}/_batchpilot/echo", 200, args.concurrency))  # warm up
        echo = asyncio.run(hammer(f"{root}/_batchpilot/echo", args.requests, args.concurrency))
        chat = asyncio.run(
            hammer(f"{server.base_url}/chat/completions", args.requests, args.concurrency)
        )
    print(f"requests {args.requests}, concurrency {args.concurrency}")
    print(f"reference: bare echo       {echo:8.0f} req/s")
    print(f"chat completions           {chat:8.0f} req/s")
    print(f"ratio chat/echo = {chat / echo:.2f}")


if __name__ == "__main__":
    main()
