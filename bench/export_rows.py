"""Benchmark: exporting a finished run to JSONL, beside a bare parse-and-write of the same output.

    python bench/export_rows.py [--rows 100000] [--rounds 5]

A store of `--rows` answered rows (a short input row each, a chat completion whose content is a
JSON object) is exported with `export_run` to JSONL. The reference reads the same rows and
answers from a JSONL file (one line per row: its input and its response), parses each line with
orjson, makes the same record (the parsed answer, usage, cost) and writes it with orjson: what
any export must do at the least. Rounds are interleaved; medians of wall and CPU time.
Target: at most 1.5x.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from batchpilot.export import export_run
from batchpilot.store import (
    BatchState,
    NewRequest,
    NewRow,
    Outcome,
    RequestState,
    RunRecord,
    SQLiteStore,
    utc_now,
)
from batchpilot.store.records import row_json

EP = "/v1/chat/completions"
CHUNK = 1000


def row(i: int) -> dict[str, object]:
    return {"id": f"m{i}", "title": f"Film {i}", "plot": f"A sailor {i} and a queen " * 12}


def response(i: int) -> dict[str, object]:
    content = orjson.dumps({"deaths": [f"Tom {i}", "Ana"], "tone": "sad"}).decode()
    return {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 24, "total_tokens": 144},
    }


def body(i: int) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "i": i}]})


def make_store(path: Path, rows: int) -> None:
    store = SQLiteStore(path)
    store.create_run(RunRecord("run", "bench", "{}", "openai", EP, "running", None, utc_now()))
    for start in range(0, rows, CHUNK):  # planned a thousand rows at a time, as a run plans
        chunk = range(start, min(start + CHUNK, rows))
        store.add_planned(
            "run",
            [
                NewRow(i, f"m{i}", f"plots.jsonl:{i + 1}", f"req-{i}", row_json(row(i)))
                for i in chunk
            ],
            [
                NewRequest(f"req-{i}", f"h{i}", EP, "gpt-4o-mini", body(i), 120, 300, i, 300)
                for i in chunk
            ],
        )
    batch = store.create_batch("run", store.pending("run", rows), size=1, file_name_prefix="b")
    for state in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
        store.move_batch("run", batch, state)
    store.move_batch("run", batch, BatchState.SUBMITTED, remote_id="batch_1")
    outcomes = [
        Outcome(f"req-{i}", RequestState.SUCCEEDED, response(i), 120, 24, 0.0001)
        for i in range(rows)
    ]
    store.finish_batch("run", batch, outcomes)
    store.close()


def make_source(path: Path, rows: int) -> None:
    with path.open("wb") as handle:
        for i in range(rows):
            handle.write(orjson.dumps({"row": row(i), "response": response(i)}) + b"\n")


def bare(source: Path, target: Path) -> float:
    started = time.perf_counter()
    with source.open("rb") as lines, target.open("wb") as out:
        for line in lines:
            item = orjson.loads(line)
            answer = item["response"]
            record = {
                "id": item["row"]["id"],
                "status": "succeeded",
                "attempts": 1,
                "input": item["row"],
                "output": orjson.loads(answer["choices"][0]["message"]["content"]),
                "usage": {
                    "input_tokens": answer["usage"]["prompt_tokens"],
                    "output_tokens": answer["usage"]["completion_tokens"],
                },
                "cost_usd": 0.0001,
                "error": None,
                "lane": "batch",
                "request_id": item["row"]["id"],
            }
            out.write(orjson.dumps(record) + b"\n")
    return time.perf_counter() - started


def exported(store_path: Path, target: Path) -> float:
    started = time.perf_counter()
    store = SQLiteStore(store_path)
    try:
        export_run(store, "run", target)
    finally:
        store.close()
    return time.perf_counter() - started


def timed(work: Callable[[], float]) -> tuple[float, float]:
    """(wall, CPU) seconds of `work`."""
    cpu = time.process_time()
    wall = work()
    return wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        make_store(directory / "store.sqlite3", args.rows)
        make_source(directory / "source.jsonl", args.rows)
        exported(directory / "store.sqlite3", directory / "warm.jsonl")  # imports, page cache
        ours, reference = [], []
        for _ in range(args.rounds):
            reference.append(
                timed(lambda: bare(directory / "source.jsonl", directory / "bare.jsonl"))
            )
            ours.append(
                timed(lambda: exported(directory / "store.sqlite3", directory / "export.jsonl"))
            )
        lines = sum(1 for _ in (directory / "export.jsonl").open("rb"))
        assert lines == args.rows
    export_s, bare_s = (
        statistics.median(t[0] for t in ours),
        statistics.median(t[0] for t in reference),
    )
    export_cpu = statistics.median(t[1] for t in ours)
    bare_cpu = statistics.median(t[1] for t in reference)
    print(f"rows                                {args.rows:,}")
    print(f"export to JSONL                     {export_s:.2f} s ({export_cpu:.2f} s CPU)")
    print(f"reference: orjson parse and write   {bare_s:.2f} s ({bare_cpu:.2f} s CPU)")
    print(f"ratio export/bare = {export_s / bare_s:.2f}  (target <= 1.5)")
    print(f"ratio of CPU      = {export_cpu / bare_cpu:.2f}")


if __name__ == "__main__":
    main()
