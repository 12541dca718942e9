"""Benchmark and proof: one job driven by several `batchpilot worker` processes at once on a
PostgreSQL store, against `batchpilot serve`, while workers are killed with SIGKILL at random and
started again; the server's ledger then shows no batch created twice and no request run twice,
and the export equals a single process's run of the same job on the SQLite store.

    python bench/worker_kills.py [--requests 20000] [--workers 4] [--kills 20] [--url ...]

`batchpilot run --detach` plans the job into the store (and submits its first batches); then
`--workers` workers with `--per-run 0` drive the run together, each its own batches. The kills
are spread over the run, not the clock, so that a faster run is killed as often: one is due each
time about another `1 / (kills + 1)` of the batches has ended (within the first 80% of them, at
random), at least `--every` seconds after the one before; a random worker is killed and a new one
started, and a dead worker's batches are adopted by the others once its lease (`--lease`) runs
out. Beside it, one process
runs the same job on a server of its own with the SQLite store. The PostgreSQL server is `--url`,
else `BATCHPILOT_TEST_POSTGRES` (`.ci/postgres` starts one); the run has a schema of its own,
dropped afterwards. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from batchpilot.store import BatchState
from batchpilot.store.opening import STORE_ENV, open_store

BATCHPILOT = [sys.executable, "-m", "batchpilot"]


def serve(directory: Path, time_scale: float) -> tuple[subprocess.Popen[bytes], str]:
    """`batchpilot serve` on a free port, once it answers; with its `/v1` URL."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [*BATCHPILOT, "serve", "--port", str(port), "--state", str(directory / "server")]
    command += ["--time-scale", str(time_scale), "--validation-delay", "1"]
    command += ["--finalizing-delay", "1"]
    with (directory / "server.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_batchpilot/health", timeout=1)
            return process, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the server did not start")


def write_job(directory: Path, base_url: str, requests: int, per_batch: int) -> Path:
    rows = (
        json.dumps({"id": f"r{i:06d}", "text": f"Item {i} of the kill test"})
        for i in range(requests)
    )
    (directory / "rows.jsonl").write_text("".join(row + "\n" for row in rows))
    job = {
        "name": "kills",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 16},
        # a few batches in the queue at a time: the run lasts long enough to be killed often
        "limits": {"requests_per_batch": per_batch, "queue_tokens": per_batch * 12 * 6},
        "output": {"path": "out.jsonl"},
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def env(store: str | None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != STORE_ENV}
    base["BATCHPILOT_POLL_INTERVAL"] = "0.2"
    return base if store is None else {**base, STORE_ENV: store}


def schema_url(url: str) -> tuple[str, str]:
    import psycopg

    schema = "kills_" + secrets.token_hex(4)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    joiner = "&" if "?" in url else "?"
    return schema, f"{url}{joiner}options=-csearch_path%3D{schema}"


def drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def comparable(path: Path) -> list[tuple[Any, ...]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["id"], r["status"], json.dumps(r["output"]), r["attempts"]) for r in lines]


def export(state: Path, out: Path, store: str | None) -> None:
    command = [*BATCHPILOT, "export", "--state", str(state), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, env=env(store), timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"export failed: {done.stderr.decode()}")


def remote_tags(base_url: str, run_id: str) -> Counter[str | None]:
    """How many remote batches carry each local batch id of the run (every page of the list)."""
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=5)
    try:
        return Counter(
            (b.metadata or {}).get("batchpilot_batch")
            for b in client.batches.list(limit=100)
            if (b.metadata or {}).get("batchpilot_run") == run_id
        )
    finally:
        client.close()


class Pool:
    """The worker processes, killed and started again."""

    def __init__(self, state: Path, store: str, lease_s: float, logs: Path) -> None:
        self.state, self.store, self.lease_s, self.logs = state, store, lease_s, logs
        self.alive: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(self) -> None:
        command = [*BATCHPILOT, "worker", "--state", str(self.state), "--per-run", "0"]
        command += ["--lease", str(self.lease_s), "--idle", "0.2"]
        self.started += 1
        with (self.logs / f"worker-{self.started}.log").open("ab") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=log, env=env(self.store)
            )
        self.alive.append(process)

    def kill_one(self, rng: random.Random) -> None:
        victim = rng.choice(self.alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.alive.remove(victim)
        self.start()

    def stop(self) -> None:
        for process in self.alive:
            process.terminate()  # an idle worker stops on SIGTERM
        for process in self.alive:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def kill_marks(batches: int, kills: int, rng: random.Random) -> list[int]:
    """How many batches have ended when each kill is due: evenly spread over the first 80% of
    the run's batches, each moved at random by up to half a step."""
    span = max(1.0, 0.8 * batches)
    step = span / (kills + 1)
    return sorted(
        min(int(span), max(0, round(step * (i + 1) + rng.uniform(-step / 2, step / 2))))
        for i in range(kills)
    )


def run_shared(args: argparse.Namespace, root: Path, store_url: str) -> dict[str, Any]:
    directory = root / "shared"
    directory.mkdir()
    server, url = serve(directory, args.time_scale)
    pool = Pool(directory / "state", store_url, args.lease, directory)
    rng = random.Random(args.seed)
    try:
        job = write_job(directory, url, args.requests, args.per_batch)
        began = time.monotonic()
        planned = subprocess.run(
            [*BATCHPILOT, "run", str(job), "--state", str(directory / "state"), "--detach"],
            capture_output=True,
            env=env(store_url),
            timeout=3600,
        )
        if planned.returncode != 0:
            raise SystemExit(f"run --detach failed: {planned.stderr.decode()}")
        driven = time.monotonic()
        for _ in range(args.workers):
            pool.start()
        watch = open_store(directory / "state", {STORE_ENV: store_url})
        try:
            (run,) = watch.runs()
            marks = kill_marks(-(-args.requests // args.per_batch), args.kills, rng)
            kills, last = 0, -math.inf
            while (status := watch.run(run.id)) is not None and status.status != "finished":
                if time.monotonic() - began > args.timeout:
                    raise SystemExit("the shared run did not finish in time")
                if kills < args.kills and time.monotonic() - last >= args.every:
                    ended = len(watch.batches(run.id, [BatchState.FINISHED]))
                    if ended >= marks[kills]:
                        pool.kill_one(rng)
                        kills += 1
                        last = time.monotonic()
                time.sleep(0.05)
            seconds, plan_s = time.monotonic() - began, driven - began
            owners = Counter(b.worker_id for b in watch.batches(run.id))
            recorded = Counter(
                row[0]
                for row in watch._db.execute(  # type: ignore[attr-defined]
                    "SELECT request_id FROM attempts WHERE run_id = %s AND lane = 'batch'",
                    (run.id,),
                )
            )
            made = sum(1 for b in watch.batches(run.id) if b.remote_id is not None)
        finally:
            watch.close()
        pool.stop()
        ledger = httpx.get(url.removesuffix("/v1") + "/_batchpilot/ledger", timeout=120).json()
        executed = Counter(row["custom_id"] for row in ledger)
        tags = remote_tags(url, run.id)
        export(directory / "state", directory / "export.jsonl", store_url)
        return {
            "seconds": seconds,
            "plan_seconds": plan_s,
            "kills": kills,
            "workers_started": pool.started,
            "batches": made,
            "drivers": len(owners),
            "ran_twice": sum(1 for n in executed.values() if n > 1),
            "ran": len(executed),
            "ledger_is_the_store": executed == recorded,
            "created_twice": sum(1 for n in tags.values() if n > 1),
            "remote_batches": len(tags),
        }
    finally:
        pool.stop()
        server.terminate()
        server.wait(timeout=30)


def run_alone(args: argparse.Namespace, root: Path) -> float:
    directory = root / "alone"
    directory.mkdir()
    server, url = serve(directory, args.time_scale)
    try:
        job = write_job(directory, url, args.requests, args.per_batch)
        began = time.monotonic()
        done = subprocess.run(
            [*BATCHPILOT, "run", str(job), "--state", str(directory / "state"), "--quiet"],
            capture_output=True,
            env=env(None),
            timeout=args.timeout,
        )
        if done.returncode != 0:
            raise SystemExit(f"the single process failed: {done.stderr.decode()}")
        seconds = time.monotonic() - began
        export(directory / "state", directory / "export.jsonl", None)
        return seconds
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--per-batch", type=int, default=200, help="requests per batch")
    parser.add_argument("--every", type=float, default=0.0, help="least seconds between kills")
    parser.add_argument("--lease", type=float, default=3.0, help="each worker's lease, seconds")
    parser.add_argument("--time-scale", type=float, default=600.0, help="the server's clock")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--short", action="store_true", help="a tiny run: it still runs")
    parser.add_argument("--url", default=os.environ.get("BATCHPILOT_TEST_POSTGRES"))
    args = parser.parse_args(argv)
    if args.short:
        args.requests, args.workers, args.kills, args.per_batch = 300, 2, 3, 20
    if not args.url:
        print("no PostgreSQL server (--url or BATCHPILOT_TEST_POSTGRES): skipped")
        return 0
    print(
        f"{args.requests:,} requests in batches of {args.per_batch}, {args.workers} workers on "
        f"one run, {args.kills} kills (SIGKILL) spread over its batches, lease {args.lease:g}s"
    )
    schema, store_url = schema_url(args.url)
    try:
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as beside:
            root = Path(tmp)
            alone = beside.submit(run_alone, args, root)  # on a server of its own, at once
            shared = run_shared(args, root, store_url)
            alone_s = alone.result()
            same = comparable(root / "shared" / "export.jsonl") == comparable(
                root / "alone" / "export.jsonl"
            )
    finally:
        drop(args.url, schema)
    shared.update(single_process_seconds=alone_s, export_equal=same)
    print(json.dumps(shared, indent=2))
    ok = (
        same
        and shared["ran_twice"] == 0
        and shared["created_twice"] == 0
        and shared["ran"] == args.requests
        and shared["ledger_is_the_store"]
        and shared["remote_batches"] == shared["batches"]
        and shared["kills"] == args.kills
    )
    print(
        f"| {args.requests:,} requests, {args.workers} workers, {shared['kills']} kills | "
        f"{shared['seconds']:.0f} s ({shared['plan_seconds']:.0f} s planning) | "
        f"single process {alone_s:.0f} s | "
        f"{shared['batches']} batches by {shared['drivers']} workers | "
        f"run twice: {shared['ran_twice']} | created twice: {shared['created_twice']} | "
        f"export equal: {'yes' if same else 'NO'} |"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
