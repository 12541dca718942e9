"""Benchmark: is the client linear in the size of the run? N small requests, planned and run
through the batch lane against the local server, at several sizes.

    python bench/scale.py [--sizes 10000,100000] [--million] [--short]

Each size runs in a fresh client process (plan, pack, upload, create, poll, download, ingest,
export) against a local server in this process (synthetic responder, `--time-scale` times the
wall clock), so the client's CPU seconds and peak memory are its own. Reported per size: client
CPU per request and peak memory; then the ratio of CPU per request at the largest size to that at
the smallest (target: at most 1.15), both raw and less the fixed cost of a 100-request run
(start-up, imports). `--million` adds 1,000,000; `--short` runs 1,000 and 4,000 (for CI).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "gpt-4o-mini"
PER_BATCH = 2_000


def write_job(directory: Path, count: int, base_url: str) -> Path:
    with (directory / "rows.jsonl").open("w") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": f"r{i}", "text": f"sentence number {i}"}) + "\n")
    spec = {
        "name": "scale",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": MODEL,
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 12},
        "limits": {"requests_per_batch": PER_BATCH, "queue_tokens": 10**10},
        "output": {"path": "out.jsonl"},
    }
    path = directory / "job.json"
    path.write_text(json.dumps(spec))
    return path


def client(job_path: Path) -> None:
    """The measured process: run the job to the end."""
    from batchpilot.run import run_job
    from batchpilot.spec import job_from_dict

    job = job_from_dict(json.loads(job_path.read_text()), base_dir=job_path.parent)
    result = run_job(job, state_dir=job_path.parent / "state", poll_interval=0.05)
    assert result.status.finished, result.status


def measure(count: int, base_url: str, root: Path) -> tuple[float, float]:
    """(client CPU seconds, client peak memory in MB) of one run of `count` requests."""
    directory = root / f"n{count}"
    directory.mkdir()
    job = write_job(directory, count, base_url)
    # all the client's work in the measured process: no shared counting service
    env = {**os.environ, "BATCHPILOT_COUNT_SERVICE": "0"}
    child = subprocess.Popen([sys.executable, __file__, "--client", str(job)], env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the client for {count:,} requests exited with {child.returncode}")
    lines = sum(1 for _ in (directory / "out.jsonl").open("rb"))
    assert lines == count, (lines, count)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--million", action="store_true", help="add a 1,000,000-request run")
    parser.add_argument("--short", action="store_true", help="1,000 and 4,000 requests")
    parser.add_argument("--time-scale", type=float, default=100_000.0)
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        client(args.client)
        return
    sizes = [1_000, 4_000] if args.short else [int(s) for s in args.sizes.split(",")]
    if args.million:
        sizes.append(1_000_000)

    from batchpilot.server import LocalServer, ServerConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = ServerConfig(state_dir=root / "server", time_scale=args.time_scale)
        with LocalServer(config) as server:
            fixed, _ = measure(100, server.base_url, root)
            print(f"fixed cost (100 requests): {fixed:.2f} s CPU")
            results = {}
            for count in sizes:
                cpu, peak = measure(count, server.base_url, root)
                results[count] = cpu
                print(
                    f"{count:>9,} requests: {cpu:7.1f} s CPU, {cpu / count * 1e3:.3f} ms per "
                    f"request ({(cpu - fixed) / count * 1e3:.3f} less the fixed cost), "
                    f"peak {peak:.0f} MB",
                    flush=True,
                )
    small, large = min(results), max(results)
    raw = (results[large] / large) / (results[small] / small)
    net = ((results[large] - fixed) / large) / ((results[small] - fixed) / small)
    print(
        f"ratio CPU per request {large:,} / {small:,}: {raw:.2f} (less the fixed cost: {net:.2f})"
    )
    print("target <= 1.15")


if __name__ == "__main__":
    main()
