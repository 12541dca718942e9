"""Benchmark: real-time chat completions per second against the synthetic responder.

    python bench/server_realtime.py [--seconds 10] [--connections 32]

The load comes from `wrk` (Debian package `wrk`) in its own process; without it, a Python
asyncio client is used, which is slower than the server and understates both rates. The
reference, measured in the same run on the same server, is the framework alone answering a bare
echo of the same body (`/_batchpilot/echo`). Reported: both rates and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from batchpilot.server import LocalServer, ServerConfig

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something short."}]}


def with_wrk(url: str, seconds: int, connections: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        )
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    )
    Path(script.name).unlink()
    if "Non-2xx" in result.stdout:
        raise SystemExit(f"errors during the run:\n{result.stdout}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


async def _hammer(url: str, seconds: int, connections: int) -> float:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        done = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                (await client.post(url, json=BODY)).raise_for_status()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return done / (time.perf_counter() - started)


def _python_client(url: str, seconds: int, connections: int) -> float:
    return asyncio.run(_hammer(url, seconds, connections))


def measure(url: str, seconds: int, connections: int) -> float:
    if shutil.which("wrk"):
        return with_wrk(url, seconds, connections)
    with ProcessPoolExecutor(1) as pool:
        return pool.submit(_python_client, url, seconds, connections).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalServer(ServerConfig(state_dir=Path(tmp))) as server,
    ):
        root = server.base_url.removesuffix("/v1")
        measure(f"{root}/_batchpilot/echo", 1, args.connections)  # warm up
        echo = measure(f"{root}/_batchpilot/echo", args.seconds, args.connections)
        chat = measure(f"{server.base_url}/chat/completions", args.seconds, args.connections)
    client = "wrk" if shutil.which("wrk") else "python asyncio client (install wrk)"
    print(f"load: {client}, {args.connections} connections, {args.seconds} s each")
    print(f"reference: bare echo       {echo:8.0f} req/s")
    print(f"chat completions           {chat:8.0f} req/s")
    print(f"ratio chat/echo = {chat / echo:.2f}")


if __name__ == "__main__":
    main()
