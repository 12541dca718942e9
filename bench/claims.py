"""Benchmark: claim throughput, requests moved from pending into batches per second, by 1, 2 and
4 worker processes on one PostgreSQL store, beside one process on the SQLite store.

    python bench/claims.py [--runs 8] [--requests 2000] [--url postgresql://...]

Each worker claims a run under a lease (`Store.claim_run`, `FOR UPDATE SKIP LOCKED` on
PostgreSQL), forms batches of 100 of its pending requests as the batch lane does (one
transaction each: what the account's shared queue limit leaves, the pending requests, the new
batch, its hold on the queue), and marks the run finished (nothing left to claim) once nothing
is pending. The PostgreSQL server is `--url`, else `BATCHPILOT_TEST_POSTGRES` (`.ci/postgres`
starts one); each measure has a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from batchpilot.store import RunRecord, RunState, SQLiteStore, Store, utc_now

ACCOUNT, MODEL, EP = "openai", "gpt-4o-mini", "/v1/chat/completions"
BATCH = 100


def open_at(where: str) -> Store:
    if where.startswith("postgresql://"):
        from batchpilot.store.postgres import PostgresStore

        return PostgresStore(where)
    return SQLiteStore(Path(where))


def plan(where: str, runs: int, requests: int) -> None:
    store = open_at(where)
    store.set_limits(ACCOUNT, MODEL, queue_tokens=10**12, rpm=None, tpm=None)
    for r in range(runs):
        run_id = f"run-{r}"
        store.create_run(RunRecord(run_id, "bench", "{}", "openai", EP, "planned", None, utc_now()))
        with store.tx():
            for i in range(requests):
                body = json.dumps({"model": MODEL, "r": r, "i": i}).encode()
                store.add_row(run_id, i, f"row-{i}", "in.jsonl", f"req-{i}", None)
                store.add_request(run_id, f"req-{i}", f"{r}-{i}", EP, MODEL, body, 20, 16, i)
    store.close()


def worker(where: str, start: Any, moved: Any) -> None:
    store = open_at(where)
    name = f"w{os.getpid()}"
    start.wait()
    count = 0
    while (claim := store.claim_run(name, 60)) is not None:
        run_id = claim.run.id
        store.move_run(run_id, RunState.RUNNING)
        while True:
            with store.tx():
                left = store.queue_left(ACCOUNT, MODEL)
                pending = store.pending(run_id, BATCH)
                if not pending or (left is not None and left < 20 * len(pending)):
                    break
                batch_id = store.create_batch(run_id, pending, size=1, file_name_prefix="b")
                store.hold_queue(ACCOUNT, MODEL, run_id, batch_id, 20 * len(pending))
            count += len(pending)
        store.move_run(run_id, RunState.FINISHED)  # every request is in a batch: nothing to claim
        store.release_run(run_id, name)
    store.close()
    with moved.get_lock():
        moved.value += count


def measure(where: str, workers: int, runs: int, requests: int) -> float:
    plan(where, runs, requests)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(workers + 1)
    moved = context.Value("q", 0)
    processes = [context.Process(target=worker, args=(where, start, moved)) for _ in range(workers)]
    for process in processes:
        process.start()
    start.wait()
    began = time.perf_counter()
    for process in processes:
        process.join()
    seconds = time.perf_counter() - began
    assert moved.value == runs * requests, (moved.value, runs * requests)
    return moved.value / seconds


def schema_url(url: str) -> tuple[str, str]:
    import psycopg

    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    joiner = "&" if "?" in url else "?"
    return schema, f"{url}{joiner}options=-csearch_path%3D{schema}"


def drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--url", default=os.environ.get("BATCHPILOT_TEST_POSTGRES"))
    args = parser.parse_args(argv)
    total = args.runs * args.requests
    print(f"{args.runs} runs of {args.requests} requests ({total:,}), batches of {BATCH}")
    with tempfile.TemporaryDirectory() as tmp:
        rate = measure(str(Path(tmp) / "s.sqlite3"), 1, args.runs, args.requests)
    print(f"| SQLite, 1 process | {rate:,.0f} requests/s |")
    if not args.url:
        print("no PostgreSQL server (--url or BATCHPILOT_TEST_POSTGRES): skipped")
        return 0
    for workers in (1, 2, 4):
        schema, url = schema_url(args.url)
        try:
            rate = measure(url, workers, args.runs, args.requests)
        finally:
            drop(args.url, schema)
        print(
            f"| PostgreSQL, {workers} worker{'s' if workers > 1 else ''} | {rate:,.0f} requests/s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
