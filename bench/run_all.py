"""Run every benchmark in this directory, one after another.

    python bench/run_all.py [--short]

`--short` (or the environment variable BATCHPILOT_BENCH_SHORT=1) runs each benchmark on a tiny
workload: it proves that they all still run (the slow test tier does this), and its numbers
mean nothing. `make bench` runs them in full, `make bench-short` in short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

# Each benchmark's arguments for a short run; a new benchmark must add its own.
SHORT: dict[str, list[str]] = {
    "answer_check.py": ["--answers", "200", "--rounds", "1"],
    "claims.py": ["--runs", "4", "--requests", "100"],
    "client_cpu.py": ["--requests", "200", "--rounds", "1"],
    "hybrid_movies.py": ["--scale", "4000", "--time-scale", "36000"],
    "export_rows.py": ["--rows", "300", "--rounds", "1"],
    "import_time.py": ["--rounds", "1", "--no-warm-up"],
    "local_lane.py": ["--requests", "2", "--rounds", "1", "--max-tokens", "48"],
    "plan_movies.py": ["--rows", "100", "--memory-rows", "50", "--load-rounds", "1"],
    "report_build.py": ["--rows", "200"],
    "scale.py": ["--short"],
    "ui_answers.py": ["--rows", "200", "--repeat", "1"],
    "worker_kills.py": ["--short"],
    "realtime_lane.py": [
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--rpm",
        "120",
        "--paced",
        "4",
        "--rounds",
        "1",
    ],
    "server_batch.py": ["--lines", "50"],
    "server_realtime.py": ["--seconds", "1", "--connections", "4"],
    "store_ingest.py": ["--lines", "200", "--scale", "500", "--schema", "compiled"],
}
# Further short runs of a benchmark's other modes, so that they cannot rot either.
SHORT_ALSO: dict[str, list[list[str]]] = {
    "report_build.py": [["--rows", "200", "--whole"]],
}


def main(argv: list[str]) -> int:
    short = "--short" in argv or os.environ.get("BATCHPILOT_BENCH_SHORT", "") not in ("", "0")
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    missing = [p.name for p in scripts if p.name not in SHORT]
    if short and missing:
        print(f"no short arguments for {', '.join(missing)}: add them to SHORT in run_all.py")
        return 2
    for script in scripts:
        runs = [SHORT[script.name], *SHORT_ALSO.get(script.name, [])] if short else [[]]
        for arguments in runs:
            print(f"== {script.name} {' '.join(arguments)}".rstrip(), flush=True)
            started = time.monotonic()
            subprocess.run([sys.executable, str(script), *arguments], check=True)
            print(f"== {script.name}: {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
