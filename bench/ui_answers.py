"""Benchmark: pages of the answer browser (`batchpilot ui`) beside reading the same rows.

    python bench/ui_answers.py [--rows 10000] [--repeat 5]

A finished run of `--rows` rows (the tests' sample: half real time, half in batches, every 25th
failed) is served by the ui's application over loopback HTTP (uvicorn in a thread, as
`batchpilot ui` serves it); each page is fetched `--repeat` times and the median kept. The
reference is the same page's rows and request bodies read straight from the store, with their
count as the page counts them. Target: every page under one second.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from batchpilot.run import open_store
from batchpilot.store.records import AnswerFilter
from batchpilot.ui import COUNT_AHEAD, PAGE_SIZE, ui_app
from ui_sample import fill

RUN = "browse-1"


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        store = open_store(state)
        started = time.perf_counter()
        fill(store, RUN, args.rows)
        print(f"built a run of {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(ui_app(state), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        last = (args.rows - 1) // PAGE_SIZE
        cases = [
            ("first page", {}, AnswerFilter(), 0),
            ("last page", {"page": last}, AnswerFilter(), last),
            ("failed, page 2", {"state": "failed", "page": 1}, AnswerFilter(state="failed"), 1),
            ("reason 'schema'", {"reason": "schema"}, AnswerFilter(reason="schema"), 0),
            ("succeeded, page 3", {"state": "succeeded", "page": 2}, AnswerFilter("succeeded"), 2),
            ("search 'number 77'", {"q": "number 77"}, AnswerFilter(search="number 77"), 0),
        ]
        print(f"| page of {PAGE_SIZE} rows | served (ms) | store alone (ms) | ratio |")
        print("|---|---|---|---|")
        worst = 0.0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for name, params, where, page in cases:

                def served(params: dict[str, object] = params) -> None:
                    client.get(f"/runs/{RUN}/answers", params=params).raise_for_status()

                def read(where: AnswerFilter = where, page: int = page) -> None:
                    found = store.answer_page(RUN, where, page * PAGE_SIZE, PAGE_SIZE, COUNT_AHEAD)
                    for row in found.rows:
                        if row.request_id:
                            store.request_body(RUN, row.request_id)

                web = median_seconds(served, args.repeat)
                alone = median_seconds(read, args.repeat)
                worst = max(worst, web)
                print(f"| {name} | {web * 1000:.0f} | {alone * 1000:.0f} | {web / alone:.1f} |")
            detail = median_seconds(
                lambda: client.get(f"/runs/{RUN}/answers/0").raise_for_status(), args.repeat
            )
            print(f"| one row with its attempts | {detail * 1000:.0f} | | |")
        server.should_exit = True
        thread.join(timeout=10)
        store.close()
        verdict = "under" if worst < 1.0 else "OVER"
        print(f"slowest page {worst * 1000:.0f} ms: {verdict} the one-second target")


if __name__ == "__main__":
    main()
