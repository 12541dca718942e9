"""Benchmark: building the HTML report of a large run, beside reading its attempts alone.

    python bench/report_build.py [--rows 50000]

A finished run of `--rows` rows (the tests' sample: half real time, half in batches of 1,000,
every 25th failed after a retry) is reported with `build_report`. The reference is streaming
the same run's attempts out of the store and nothing else. The peak of Python's own memory
while building shows that the report streams: it should not grow with the rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from batchpilot.report import build_report
from batchpilot.run import open_store
from ui_sample import fill

RUN = "browse-1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "state")
        started = time.perf_counter()
        fill(store, RUN, args.rows)
        print(f"built a run of {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        tries = sum(1 for _ in store.attempts(RUN))
        alone = time.perf_counter() - started
        build_report(store, RUN)  # plotly's first import, outside the measure
        started = time.perf_counter()
        page = build_report(store, RUN)
        built = time.perf_counter() - started
        tracemalloc.start()  # a second build, for memory alone: tracing slows it
        build_report(store, RUN)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        store.close()
    print("| measure | value |")
    print("|---|---|")
    print(f"| attempts read alone ({tries:,}) | {alone:.2f} s |")
    print(f"| report built | {built:.2f} s |")
    print(f"| ratio | {built / alone:.1f} |")
    print(f"| peak Python memory while building | {peak / 2**20:.1f} MiB |")
    print(f"| report size | {len(page) / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
