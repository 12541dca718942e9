"""Benchmark: ingesting a 50,000-line batch output file into the store, and the store at scale.

    python bench/store_ingest.py [--lines 50000] [--scale 1000000] [--rounds 1] [--movie]
                                 [--schema {refusals,compiled,jsonschema,none}]
                                 [--failing 0.01]

1. Ingest: read, match by id, classify, price and commit every line of a 50,000-line output
   file (one transaction), beside `orjson.loads` of every line of the same file in the same
   run, with the cyclic collector held off as ingest holds it off (target: at most 2x), and
   beside the same loop with the collector on; then the CPU of each of ingest's phases
   (reading the batch's requests back, reading and parsing the lines, matching, checking and
   pricing them, and the store's writes) as a multiple of the reference's CPU. Every answer is
   checked as every job checks it, for a refusal (`--schema refusals`, the default); with
   `--schema compiled` against a response schema as well, as a job with one checks it
   (`jsonschema`: with the `jsonschema` package alone, as it did before); `none` checks
   nothing, which no job does.
   With `--failing`, that share of the answers is sent back to be tried again, as a check
   refusing them would.
2. Scale: plan `--scale` requests into a store, pass them through batches of 50,000 to results,
   and report the store's size per request and the time per request. `--movie` gives each row
   a movie-sized plot (a 2.75 KB input line, rendered into a system prompt and the plot) and each
   answer a movie-sized response, and reports the store's bytes per request beside the raw
   input line plus the raw answer.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import itertools
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from batchpilot.pricing import PriceTable, usage_cost
from batchpilot.run.ingest import RetryPolicy, classify, collector_paused, read_lines
from batchpilot.store import (
    BatchState,
    NewRequest,
    NewRow,
    Outcome,
    PendingRequest,
    RequestState,
    RunRecord,
    SQLiteStore,
    utc_now,
)
from batchpilot.store.records import row_json
from batchpilot.validate import AnswerCheck


def answer(custom_id: str, i: int) -> bytes:
    body = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "refusal": None,
                    "content": json.dumps({"deaths": ["Tom", "Ana"], "tone": "sad"}),
                },
            }
        ],
        "usage": {"prompt_tokens": 420, "completion_tokens": 24, "total_tokens": 444},
    }
    line = {
        "id": f"batch_req_{i}",
        "custom_id": custom_id,
        "error": None,
        "response": {"status_code": 200, "request_id": f"req_{i}", "body": body},
    }
    return json.dumps(line).encode() + b"\n"


SYSTEM = "Extract the characters who die in this plot, and the tone of the film, as JSON."
PROSE_MODULES = ("argparse", "collections", "email.message", "inspect", "json", "logging", "re")


@functools.cache
def prose() -> str:
    """English prose that compresses like a plot summary: the standard library's docstrings."""
    texts = []
    for name in PROSE_MODULES:
        module = importlib.import_module(name)
        for value in [module, *vars(module).values()]:
            doc = getattr(value, "__doc__", None)
            if isinstance(doc, str) and getattr(value, "__module__", name) == name:
                texts.append(" ".join(doc.split()))
    return " ".join(texts)


@functools.cache
def _following() -> dict[str, list[str]]:
    """Each word of the prose and the words that follow it there."""
    words = prose().split()
    following: dict[str, list[str]] = {}
    for word, after in itertools.pairwise(words):
        following.setdefault(word, []).append(after)
    return following


@functools.cache
def _words() -> list[str]:
    return list(_following())


def plot(index: int) -> str:
    """A 2.7 KB plot of its own: words walked from the prose's pairs of words (each word
    followed by one that follows it there), so that plots share the prose's words and phrasing
    as real plots share a language, but no plot repeats another's text."""
    following = _following()
    every = _words()
    choose = random.Random(index).choice
    words, size = [f"Film {index}:"], 0
    word = choose(every)
    while size < 2650:
        words.append(word)
        size += len(word) + 1
        word = choose(following.get(word) or every)
    return " ".join(words)[:2650]


def movie_row(index: int) -> tuple[dict[str, object], bytes]:
    """A movie-sized input row and the request body rendered from it."""
    row = {"id": f"m{index}", "title": f"Film {index}", "plot": plot(index)}
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": row["plot"]},
        ],
        "max_tokens": 300,
    }
    return row, json.dumps(body, separators=(",", ":")).encode()


def fill(
    store: SQLiteStore, run_id: str, count: int, start: int = 0, movie: bool = False
) -> list[str]:
    """`count` rows and a request for each, planned a thousand at a time as a run plans."""
    ids = [f"bp-{i:032x}" for i in range(start, start + count)]
    for chunk in range(0, count, 1000):
        rows, requests = [], []
        for offset in range(chunk, min(chunk + 1000, count)):
            index, request_id = start + offset, ids[offset]
            row, body = movie_row(index) if movie else ({"plot": "x" * 40}, b'{"model":"m"}')
            rows.append(
                NewRow(index, f"row-{index}", f"data.jsonl:{index + 1}", request_id, row_json(row))
            )
            requests.append(
                NewRequest(
                    request_id,
                    hashlib.sha256(request_id.encode()).hexdigest(),  # as random as a real one
                    "/v1/chat/completions",
                    "gpt-4o-mini",
                    body,
                    420,
                    300,
                    index,
                    300,
                    0.00024,  # priced at planning, as a priced model is
                    0.00012,
                )
            )
        store.add_planned(run_id, rows, requests)
    return ids


def submit(store: SQLiteStore, run_id: str, count: int) -> int:
    pending = store.pending(run_id, count)
    batch = store.create_batch(run_id, pending, size=1, file_name_prefix="bench")
    for state in (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING):
        store.move_batch(run_id, batch, state)
    store.move_batch(run_id, batch, BatchState.SUBMITTED, remote_id=f"batch_{batch}")
    return batch


PHASES = (
    ("requests", "reading the batch's requests back"),
    ("parse", "reading and parsing the lines"),
    ("classify", "matching, checking and pricing them"),
    ("store", "the store's writes"),
)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "deaths": {"type": "array", "items": {"type": "string"}},
        "tone": {"type": "string", "enum": ["sad", "happy", "dark"]},
    },
    "required": ["deaths", "tone"],
    "additionalProperties": False,
}


def answer_check(schema: str) -> Callable[[PendingRequest, dict[str, Any]], str | None] | None:
    """The check a job makes of every answer, as the lanes call it: for a refusal, and with a
    response schema against it."""
    if schema == "none":
        return None
    if schema == "refusals":
        refusals = AnswerCheck()
        return lambda request, body: refusals(body)
    check = AnswerCheck(SCHEMA)
    if schema == "jsonschema":
        check.valid = None
    else:
        assert check.valid is not None, "the compiled validator did not take the schema"
    return lambda request, body: check(body)


def ingest_round(
    lines: int, schema: str = "refusals", failing: float = 0.0
) -> tuple[float, float, dict[str, float], float]:
    """(ingest's wall seconds, the reference's, each phase's CPU seconds as a multiple of the
    reference's CPU, the plain parse's wall seconds) of one round in a fresh store."""
    prices = PriceTable.load()
    check = answer_check(schema)

    def cost(request: PendingRequest, body: dict[str, Any]) -> tuple[int, int, float]:
        return usage_cost(prices, request.model, body, batch=True)  # as the batch lane prices

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "store.sqlite3")
        store.create_run(
            RunRecord(
                "bench", "bench", "{}", "openai", "/v1/chat/completions", "running", None, utc_now()
            )
        )
        ids = fill(store, "bench", lines)
        batch = submit(store, "bench", lines)
        output = Path(tmp) / "output.jsonl"
        with output.open("wb") as handle:
            for i, request_id in enumerate(reversed(ids)):  # results come in any order
                handle.write(answer(request_id, i))

        started = time.perf_counter()
        with output.open("rb") as source:
            parsed = [orjson.loads(line) for line in source]
        plain = time.perf_counter() - started
        del parsed
        started, cpu = time.perf_counter(), time.process_time()
        # the fastest bare parse: the collector held off as ingest holds it off
        with collector_paused(), output.open("rb") as source:
            parsed = [orjson.loads(line) for line in source]
        reference, reference_cpu = time.perf_counter() - started, time.process_time() - cpu
        assert len(parsed) == lines
        del parsed

        marks = [(time.perf_counter(), time.process_time())]
        with collector_paused():  # as the batch lane ingests
            requests = store.batch_requests("bench", batch, bodies=False)
            marks.append((time.perf_counter(), time.process_time()))
            read = list(read_lines([output]))
            marks.append((time.perf_counter(), time.process_time()))
            outcomes = classify(requests, iter(read), RetryPolicy(), cost, check=check)
            if failing > 0:  # a share of the answers refused by a check: tried again
                every = round(1 / failing)
                outcomes = [
                    o._replace(state=RequestState.PENDING, response=None, error="schema: x")
                    if i % every == every - 1
                    else o
                    for i, o in enumerate(outcomes)
                ]
            marks.append((time.perf_counter(), time.process_time()))
            store.finish_batch("bench", batch, outcomes)
            marks.append((time.perf_counter(), time.process_time()))
        assert store.request_counts("bench")["succeeded"] == lines - (
            0 if failing <= 0 else lines // round(1 / failing)
        )
        store.close()
    phases = {
        name: (marks[i + 1][1] - marks[i][1]) / reference_cpu for i, (name, _) in enumerate(PHASES)
    }
    return marks[-1][0] - marks[0][0], reference, phases, plain


def ingest_benchmark(
    lines: int, rounds: int = 1, schema: str = "refusals", failing: float = 0.0
) -> None:
    results = [ingest_round(lines, schema, failing) for _ in range(rounds)]
    elapsed = statistics.median(r[0] for r in results)
    reference = statistics.median(r[1] for r in results)
    ratio = statistics.median(r[0] / r[1] for r in results)
    plain = statistics.median(r[3] for r in results)
    print(f"ingest {lines:,} lines            {elapsed:.2f} s")
    print(f"reference: orjson.loads of each line, the collector held off  {reference:.2f} s")
    print(f"           the same with the collector on (a plain loop)     {plain:.2f} s")
    print(f"ratio ingest/parse = {ratio:.2f}  (target <= 2)")
    print(f"ratio ingest/plain parse = {statistics.median(r[0] / r[3] for r in results):.2f}")
    print("CPU of each phase, as a multiple of the reference's CPU (medians):")
    for name, label in PHASES:
        print(f"  {label:<40} {statistics.median(r[2][name] for r in results):5.2f}")


def scale_benchmark(total: int, movie: bool = False) -> None:
    chunk = 50_000
    raw = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.sqlite3"
        store = SQLiteStore(path)
        store.create_run(
            RunRecord(
                "scale", "scale", "{}", "openai", "/v1/chat/completions", "running", None, utc_now()
            )
        )
        started = time.perf_counter()
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            fill(store, "scale", count, start, movie)
            batch = submit(store, "scale", count)
            requests = store.batch_requests("scale", batch)
            if movie:
                answers = [json.loads(answer(r.id, i)) for i, r in enumerate(requests)]
                raw += sum(len(json.dumps(movie_row(r.first_row)[0])) + 1 for r in requests)
                raw += sum(len(json.dumps(a["response"]["body"])) for a in answers)
            body = {
                "choices": [{"message": {"content": '{"tone": "sad"}'}}],
                "usage": {"prompt_tokens": 420, "completion_tokens": 24},
            }
            outcomes = [
                Outcome(
                    r.id,
                    RequestState.SUCCEEDED,
                    answers[i]["response"]["body"] if movie else body,
                    420,
                    24,
                    0.0001,
                )
                for i, r in enumerate(requests)
            ]
            store.finish_batch("scale", batch, outcomes)
        elapsed = time.perf_counter() - started
        counts = store.request_counts("scale")
        store.close()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    assert counts["succeeded"] == total
    print(
        f"store with {total:,} answered requests: {size / 1e6:,.0f} MB, "
        f"{size / total:,.0f} bytes per request"
    )
    print(f"plan + submit + ingest: {elapsed:.1f} s, {elapsed / total * 1e6:.0f} us per request")
    if movie:
        print(
            f"raw input line + raw answer: {raw / total:,.0f} bytes per request; "
            f"store / raw = {size / raw:.2f} (target <= 1)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--scale", type=int, default=1_000_000)
    parser.add_argument("--movie", action="store_true", help="movie-sized rows and answers")
    parser.add_argument("--rounds", type=int, default=1, help="ingest rounds (medians)")
    parser.add_argument(
        "--schema",
        choices=("refusals", "compiled", "jsonschema", "none"),
        default="refusals",
        help="check every answer for a refusal (as every job does), against a response schema too",
    )
    parser.add_argument(
        "--failing", type=float, default=0.0, help="share of answers a check sends back"
    )
    args = parser.parse_args()
    ingest_benchmark(args.lines, args.rounds, args.schema, args.failing)
    scale_benchmark(args.scale, args.movie)


if __name__ == "__main__":
    main()
