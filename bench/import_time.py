"""Benchmark: what starting batchpilot costs, against importing the OpenAI SDK alone.

    python bench/import_time.py [--rounds 7] [--no-warm-up]

Each figure is a fresh interpreter (`python -c ...` or `python -m batchpilot ...`), timed as a
whole process; rounds are interleaved so that a busy machine slows every command alike, and the
median of each is reported. The reference is `python -c "import openai"` measured in the same run
(target: `import batchpilot` at most 1.5x of it). `batchpilot --version` and `batchpilot --help`
show what a command pays before it does any work.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS: dict[str, list[str]] = {
    "python (nothing imported)": [sys.executable, "-c", "pass"],
    "import openai (reference)": [sys.executable, "-c", "import openai"],
    "import batchpilot": [sys.executable, "-c", "import batchpilot"],
    "from batchpilot import plan_job": [sys.executable, "-c", "from batchpilot import plan_job"],
    "import batchpilot.cli": [sys.executable, "-c", "import batchpilot.cli"],
    "batchpilot --version": [sys.executable, "-m", "batchpilot", "--version"],
    "batchpilot --help": [sys.executable, "-m", "batchpilot", "--help"],
}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-warm-up", action="store_true", help="Skip warming the file cache.")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values() if not args.no_warm_up else ():  # warm the file cache
        timed(command)
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(timed(command))
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
