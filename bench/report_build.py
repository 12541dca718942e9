"""Benchmark: building the HTML report of a large run, beside reading its attempts alone.

    python bench/report_build.py [--rows 50000] [--whole]

A finished run of `--rows` rows (the tests' sample: half real time, half in batches of 1,000,
every 25th failed after a retry) is reported with `build_report`. The reference is streaming
the same run's attempts out of the store and nothing else. The peak of Python's own memory
while building shows that the report streams: it should not grow with the rows. With
`--whole`, the run is `--rows` requests answered in batches of 50,000, each kept whole, as a
large batch run is.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from batchpilot.report import build_report
from batchpilot.run import open_store
from batchpilot.store import BatchState, Outcome, RequestState, RunRecord, Store, utc_now
from ui_sample import fill

RUN = "browse-1"
EP = "/v1/chat/completions"
BATCH = 50_000


def fill_whole(store: Store, run_id: str, rows: int) -> None:
    """A finished run of `rows` requests, answered in batches of 50,000 kept whole."""
    spec = json.dumps({"requests": "rows.jsonl", "provider": "openai"})
    store.create_run(RunRecord(run_id, "browse", spec, "openai", EP, "finished", None, utc_now()))
    answer = {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 9}}
    for start in range(0, rows, BATCH):
        count = min(BATCH, rows - start)
        with store.tx():
            for i in range(start, start + count):
                store.add_row(run_id, i, f"r{i}", f"rows.jsonl:{i + 1}", f"req-{i}", {"i": i})
                store.add_request(run_id, f"req-{i}", f"h{i}", EP, "gpt-4o-mini", b"{}", 9, 9, i)
        batch = store.create_batch(
            run_id, store.pending(run_id, count), size=1, file_name_prefix="b"
        )
        for state in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
            store.move_batch(run_id, batch, state)
        store.move_batch(run_id, batch, BatchState.SUBMITTED, remote_id=f"batch_{batch}")
        ids = [r.id for r in store.batch_requests(run_id, batch, bodies=False)]
        store.finish_batch(
            run_id, batch, [Outcome(i, RequestState.SUCCEEDED, answer, 9, 2, 1e-6) for i in ids]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--whole", action="store_true", help="batches of 50,000 kept whole")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "state")
        started = time.perf_counter()
        (fill_whole if args.whole else fill)(store, RUN, args.rows)
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
