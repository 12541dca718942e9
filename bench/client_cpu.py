"""Benchmark: the client's own CPU and memory for one batch job, beside a bare SDK script.

    python bench/client_cpu.py [--requests 5000] [--rounds 3]

The same 5,000 rows go through the local server (synthetic responder, `--time-scale` times the
wall clock) in two ways, each a fresh process whose CPU seconds (user + system) and peak memory
come from the kernel (`wait4`):

- the reference: a bare script on the official `openai` SDK that writes the batch file from the
  rows, uploads it, creates the batch, polls it, downloads the output and writes each row with
  its answer, in input order;
- `batchpilot run job.yaml`: plan (render, count tokens, price, pack, lint), store, upload,
  create, poll, download, validate, ingest and export the same rows, in input order.

Both poll every `--poll` seconds. The rounds are interleaved and the medians are kept. Target:
batchpilot at most 2x the bare script's CPU and at most 2x its peak memory.

batchpilot's CPU includes what the machine's counting service (`batchpilot.count_service`)
spent while it ran, read from /proc; the service is started once before the rounds, by a plan
of 10 rows, whose CPU is shown apart. A third process per round runs the same job with
`BATCHPILOT_COUNT_SERVICE=0`, building the encoding itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "gpt-4o-mini"
PROMPT = "Give the one-word genre of this plot: {plot}"

BARE_SCRIPT = r"""
import json, sys, time
from openai import OpenAI

rows_path, work, base_url, model, prompt, poll = sys.argv[1:7]
client = OpenAI(base_url=base_url, api_key="sk-bench")
rows = [json.loads(line) for line in open(rows_path, encoding="utf-8")]
batch_path = f"{work}/batch.jsonl"
with open(batch_path, "w", encoding="utf-8") as handle:
    for row in rows:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt.format(plot=row["plot"])}],
            "max_tokens": 16,
        }
        line = {"custom_id": row["id"], "method": "POST", "url": "/v1/chat/completions",
                "body": body}
        handle.write(json.dumps(line) + "\n")
with open(batch_path, "rb") as handle:
    uploaded = client.files.create(file=handle, purpose="batch")
batch = client.batches.create(
    input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
)
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    time.sleep(float(poll))
    batch = client.batches.retrieve(batch.id)
assert batch.status == "completed", batch.status
answers = {}
for line in client.files.content(batch.output_file_id).text.splitlines():
    result = json.loads(line)
    answers[result["custom_id"]] = result["response"]["body"]["choices"][0]["message"]["content"]
with open(f"{work}/out.jsonl", "w", encoding="utf-8") as handle:
    for row in rows:
        handle.write(json.dumps({**row, "answer": answers[row["id"]]}) + "\n")
"""


def write_rows(path: Path, count: int) -> None:
    words = [
        "a",
        "detective",
        "returns",
        "to",
        "the",
        "village",
        "where",
        "she",
        "grew",
        "up",
        "and",
        "finds",
    ]
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            plot = " ".join(words[(i + k) % len(words)] for k in range(60)) + f" ({i})"
            handle.write(json.dumps({"id": f"m{i}", "plot": plot}) + "\n")


def write_job(directory: Path, base_url: str) -> Path:
    spec = {
        "name": "client-cpu",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": MODEL,
        "input": {"path": "rows.jsonl", "id_field": "id"},
        "prompt": {"user": PROMPT.replace("{plot}", "{{ plot }}")},
        "params": {"max_tokens": 16},
        "limits": {"queue_tokens": 10**10},
        "output": {"path": "out.jsonl"},
    }
    path = directory / "job.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def service_cpu(cache: Path) -> float:
    """CPU seconds spent so far by the counting service whose token cache is `cache` (0
    when there is none, or no /proc to read it from)."""
    from batchpilot.count_service import service_pid

    for lock in (cache / "tokens").glob("count-*.lock"):
        pid = service_pid(lock.with_suffix(".sock"))
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def stop_service(cache: Path) -> None:
    from batchpilot.count_service import service_pid

    for lock in (cache / "tokens").glob("count-*.lock"):
        pid = service_pid(lock.with_suffix(".sock"))
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


def measured(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(CPU seconds, peak memory in MB) of `command` run to its end in a fresh process, with
    what the counting service spent for it meanwhile."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", **(env or {})}
    cache = Path(env["BATCHPILOT_CACHE_DIR"])
    before = service_cpu(cache)
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{command[:3]} exited with {code}")
    served = service_cpu(cache) - before
    return usage.ru_utime + usage.ru_stime + served, usage.ru_maxrss / 1024


def one_round(
    root: Path, index: int, count: int, base_url: str, poll: float
) -> dict[str, tuple[float, float]]:
    bare_dir, ours_dir, alone_dir = (
        root / f"bare{index}",
        root / f"ours{index}",
        root / f"alone{index}",
    )
    for directory in (bare_dir, ours_dir, alone_dir):
        directory.mkdir()
        write_rows(directory / "rows.jsonl", count)
    job, alone_job = write_job(ours_dir, base_url), write_job(alone_dir, base_url)
    bare = measured(
        [
            sys.executable,
            "-c",
            BARE_SCRIPT,
            "rows.jsonl",
            str(bare_dir),
            base_url,
            MODEL,
            PROMPT,
            str(poll),
        ],
        bare_dir,
    )
    run = [sys.executable, "-m", "batchpilot", "run"]
    options = ["--state", "state", "--quiet", "--poll-interval", str(poll)]
    ours = measured([*run, str(job), *options], ours_dir)
    alone = measured([*run, str(alone_job), *options], alone_dir, {"BATCHPILOT_COUNT_SERVICE": "0"})
    for directory in (bare_dir, ours_dir, alone_dir):
        lines = (directory / "out.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == count, (directory, len(lines))
    return {"bare": bare, "ours": ours, "alone": alone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--time-scale", type=float, default=10_000.0)
    args = parser.parse_args()

    from batchpilot.server import LocalServer, ServerConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["BATCHPILOT_CACHE_DIR"] = str(root / "cache")
        os.environ["BATCHPILOT_COUNT_SERVICE_IDLE"] = "30"
        config = ServerConfig(state_dir=root / "server", time_scale=args.time_scale)
        with LocalServer(config) as server:
            warm = root / "warm"
            warm.mkdir()
            write_rows(warm / "rows.jsonl", 10)
            warm_cpu = measured(
                [sys.executable, "-m", "batchpilot", "plan", str(write_job(warm, server.base_url))],
                warm,
            )[0]
            rounds = [
                one_round(root, i, args.requests, server.base_url, args.poll)
                for i in range(args.rounds)
            ]
            stop_service(root / "cache")
    print(
        f"the machine's counting service started by a plan of 10 rows: {warm_cpu:.2f} s of CPU "
        "with the plan (once per machine, not counted below)"
    )
    for name, label in (
        ("bare", "bare SDK script"),
        ("ours", "batchpilot run"),
        ("alone", "batchpilot run, no counting service"),
    ):
        cpu = [r[name][0] for r in rounds]
        peak = [r[name][1] for r in rounds]
        print(
            f"{label:<18} CPU {statistics.median(cpu):6.2f} s  "
            f"({', '.join(f'{c:.2f}' for c in cpu)})  peak {statistics.median(peak):5.0f} MB"
        )
    cpu_ratio = statistics.median(r["ours"][0] / r["bare"][0] for r in rounds)
    memory_ratio = statistics.median(r["ours"][1] / r["bare"][1] for r in rounds)
    alone_ratio = statistics.median(r["alone"][0] / r["bare"][0] for r in rounds)
    print(f"ratio CPU batchpilot/bare = {cpu_ratio:.2f}  (target <= 2)")
    print(f"ratio CPU batchpilot without the counting service/bare = {alone_ratio:.2f}")
    print(f"ratio peak memory batchpilot/bare = {memory_ratio:.2f}  (target <= 2)")


if __name__ == "__main__":
    main()
