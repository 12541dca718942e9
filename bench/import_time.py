"""Benchmark: what starting batchpilot costs, against importing the OpenAI SDK alone.

    python bench/import_time.py [--rounds 7] [--no-warm-up] [--no-runs] [--before SRC]

Each figure is a fresh interpreter (`python -c ...` or `python -m batchpilot ...`), timed as a
whole process; rounds are interleaved so that a busy machine slows every command alike, and the
median of each is reported. The reference is `python -c "import openai"` measured in the same run
(target: `import batchpilot` at most 1.5x of it). `batchpilot --version` and `batchpilot --help`
show what a command pays before it does any work; `batchpilot status` and `batchpilot export`
are timed whole on a finished 12-row run (made first on the local server; `--no-runs` skips
them), target: well under a second. `--before SRC` also times each batchpilot command with
another source tree first on the path (an older checkout's `src`), interleaved with this one's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: dict[str, list[str]] = {
    "python (nothing imported)": [sys.executable, "-c", "pass"],
    "import openai (reference)": [sys.executable, "-c", "import openai"],
    "import batchpilot": [sys.executable, "-c", "import batchpilot"],
    "from batchpilot import plan_job": [sys.executable, "-c", "from batchpilot import plan_job"],
    "import batchpilot.cli": [sys.executable, "-c", "import batchpilot.cli"],
    "batchpilot --version": [sys.executable, "-m", "batchpilot", "--version"],
    "batchpilot --help": [sys.executable, "-m", "batchpilot", "--help"],
}


def stored_run(directory: Path) -> dict[str, list[str]]:
    """A finished 12-row run in `directory`/state, and the status and export commands on it."""
    from batchpilot.testing import start_local_server

    rows = "".join(json.dumps({"id": f"r{i}", "text": f"sentence {i}"}) + "\n" for i in range(12))
    (directory / "rows.jsonl").write_text(rows)
    state = str(directory / "state")
    server = start_local_server(
        directory / "server", time_scale=500, validation_delay_s=0, finalizing_delay_s=0
    )
    try:
        job = {
            "name": "start-up",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 10},
            "limits": {"queue_tokens": 10**6},
            "output": {"path": "out.jsonl"},
        }
        (directory / "job.json").write_text(json.dumps(job))
        run = [sys.executable, "-m", "batchpilot", "run", str(directory / "job.json")]
        subprocess.run([*run, "--state", state, "--quiet"], check=True, stdout=subprocess.DEVNULL)
    finally:
        server.stop()
    command = [sys.executable, "-m", "batchpilot"]
    out = str(directory / "exported.jsonl")
    return {
        "batchpilot status": [*command, "status", "--state", state],
        "batchpilot export": [*command, "export", "--state", state, "-o", out],
    }


def timed(command: list[str]) -> float:
    before = command[0] == "--before"
    env = {**os.environ, "PYTHONPATH": command[1]} if before else None
    start = time.perf_counter()
    subprocess.run(
        command[2:] if before else command, check=True, stdout=subprocess.DEVNULL, env=env
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-warm-up", action="store_true", help="Skip warming the file cache.")
    parser.add_argument("--no-runs", action="store_true", help="Skip status and export.")
    parser.add_argument("--before", help="Another source tree to time each command with too.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands = dict(COMMANDS) if args.no_runs else {**COMMANDS, **stored_run(Path(tmp))}
        if args.before:
            for name, command in list(commands.items()):
                if "batchpilot" in name:
                    commands[f"{name} (before)"] = ["--before", args.before, *command]
        times = measure(commands, args.rounds, warm_up=not args.no_warm_up)
    report(times)


def measure(
    commands: dict[str, list[str]], rounds: int, *, warm_up: bool
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values() if warm_up else ():  # warm the file cache
        timed(command)
    for _ in range(rounds):
        for name, command in commands.items():
            times[name].append(timed(command))
    return times


def report(times: dict[str, list[float]]) -> None:
    reference = statistics.median(times["import openai (reference)"])
    print(f"{'command':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'x openai':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<32} {median:9.3f} {min(values):7.3f} {max(values):7.3f} "
            f"{median / reference:9.2f}"
        )
    ratio = statistics.median(times["import batchpilot"]) / reference
    print(f"import batchpilot / import openai = {ratio:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
