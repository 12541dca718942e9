"""Benchmark: planning a movie-shaped job (~42,000 plot summaries, ~18M tokens).

    python bench/plan_movies.py [--rows 42000] [--memory-rows 4200] [--rounds 1]
                                [--before SRC]

Reports the planner's wall time (read JSONL, render, hash, count, price, pack, lint; its
modules imported first, in a fresh process each round) beside the tokenizer floor measured in
the same rounds: reading the file, parsing each line with orjson and counting the same prompt
texts, one by one and with tiktoken's threaded batch encoder, whichever is faster (target: at
most 1.2x); beside tiktoken alone counting them; the time a fresh process takes to build the
o200k encoding with the machine's rank cache empty and filled; and the planner's peak memory
for `--memory-rows` and ten times as many rows, each in a fresh process (target: flat).
`--before SRC` also times the planner of another source tree (an older checkout's `src`) in each
round, interleaved with this one's. Figures are medians of the rounds. A large input's tokens
are counted in a second process too (`batchpilot.count_worker`), or by the machine's counting
service (`batchpilot.count_service`) as a user's plan would be, started by the first round
where none runs: either's start-up is inside the planner's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = (
    "You read movie plot summaries and list every character who dies, with the cause of death "
    "and whether the death happens on screen. Answer in JSON."
)
VOCABULARY = (
    "the a detective sailor queen storm island village night river secret letter train king "
    "daughter war winter festival betrayal rescue murder escape return journey brother mother "
    "captain soldier ghost castle forest city ship bridge poison sword promise revenge love "
    "returns discovers escapes fights loses finds kills saves meets leaves betrays hides falls"
)
WORDS = tuple(VOCABULARY.split())


def make_dataset(path: Path, rows: int, words_per_row: int = 370, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(rows):
            plot = " ".join(rng.choice(WORDS) for _ in range(words_per_row))
            handle.write(
                json.dumps({"id": f"movie-{i}", "title": f"Film {i}", "plot": plot}) + "\n"
            )


def job_for(directory: Path) -> dict[str, object]:
    return {
        "name": "movies",
        "provider": {"kind": "openai"},
        "model": "gpt-4o-mini",
        "input": {"path": "plots.jsonl", "id_field": "id"},
        "prompt": {"system": SYSTEM, "user": "Title: {{ title }}\n\n{{ plot }}"},
        "params": {"max_tokens": 300, "temperature": 0},
    }


def plan_once(directory: Path) -> tuple[float, int, int]:
    from batchpilot.plan import plan_job
    from batchpilot.spec import job_from_dict

    job = job_from_dict(job_for(directory), base_dir=directory)
    started = time.perf_counter()
    result = plan_job(job)
    return time.perf_counter() - started, result.input_tokens, len(result.batches)


def tiktoken_alone(path: Path) -> tuple[float, int]:
    from batchpilot.tokens import get_encoding

    encoding = get_encoding("o200k_base")
    texts = [SYSTEM]
    with path.open() as handle:
        texts.extend(f"Title: {row['title']}\n\n{row['plot']}" for row in map(json.loads, handle))
    started = time.perf_counter()
    total = sum(len(encoding.encode_ordinary(text)) for text in texts[1:])
    total += len(texts) * len(encoding.encode_ordinary(SYSTEM))
    return time.perf_counter() - started, total


def tokenizer_floor(path: Path) -> float:
    """Read the file, parse each line with orjson and count the same prompt texts: what any
    planner of this job must do at the least."""
    import orjson

    from batchpilot.tokens import get_encoding

    encoding = get_encoding("o200k_base")
    started = time.perf_counter()
    system = len(encoding.encode_ordinary(SYSTEM))
    total = 0
    with path.open("rb") as handle:
        for line in handle:
            row = orjson.loads(line)
            total += system + len(
                encoding.encode_ordinary(f"Title: {row['title']}\n\n{row['plot']}")
            )
    return time.perf_counter() - started


def tokenizer_floor_batched(path: Path, chunk: int = 1024) -> float:
    """The floor with tiktoken's threaded batch encoder, a chunk of texts at a time."""
    import orjson

    from batchpilot.tokens import get_encoding

    encoding = get_encoding("o200k_base")
    started = time.perf_counter()
    system = len(encoding.encode_ordinary(SYSTEM))
    total, texts = 0, []
    with path.open("rb") as handle:
        for line in handle:
            row = orjson.loads(line)
            texts.append(f"Title: {row['title']}\n\n{row['plot']}")
            if len(texts) == chunk:
                total += sum(system + len(t) for t in encoding.encode_ordinary_batch(texts))
                texts = []
    total += sum(system + len(t) for t in encoding.encode_ordinary_batch(texts))
    return time.perf_counter() - started


def planner_s(directory: Path, source: str | None = None) -> tuple[float, int, int]:
    """The planner's seconds in a fresh process (modules imported and warmed on 20 rows first),
    with `source` first on the path when given."""
    env = {**os.environ, "PYTHONPATH": source} if source else None
    out = subprocess.run(
        [sys.executable, __file__, "--time", str(directory)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed, tokens, batches = out.stdout.split()
    return float(elapsed), int(tokens), int(batches)


def time_child(directory: str) -> None:
    warm = Path(directory) / "warm"
    plan_once(warm)
    print(*plan_once(Path(directory)))


def encoding_load_s(cache: Path, cold: bool) -> float:
    """Wall seconds of a fresh process that imports the tokenizer and builds o200k, less the
    same process importing it alone; `cold` empties the machine's rank cache first."""
    if cold:
        for path in cache.glob("tokens/*"):
            path.unlink()
    env = {**os.environ, "BATCHPILOT_CACHE_DIR": str(cache)}
    code = (
        "import time, tiktoken, batchpilot.tokens as t; s = time.perf_counter(); "
        "t.get_encoding('o200k_base'); print(time.perf_counter() - s)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout)


def child(directory: str) -> None:
    plan_once(Path(directory))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak_kb)


def peak_memory_mb(rows: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(Path(tmp) / "plots.jsonl", rows)
        out = subprocess.run(
            [sys.executable, __file__, "--child", tmp], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=42_000)
    parser.add_argument("--memory-rows", type=int, default=4_200)
    parser.add_argument("--load-rounds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", help="Another source tree whose planner is timed too.")
    parser.add_argument("--child")
    parser.add_argument("--time")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.time:
        time_child(args.time)
        return
    times: dict[str, list[float]] = {
        "planner": [],
        "before": [],
        "one by one": [],
        "batched": [],
        "tiktoken": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        make_dataset(directory / "plots.jsonl", args.rows)
        (directory / "warm").mkdir()
        make_dataset(directory / "warm" / "plots.jsonl", 20)
        from batchpilot.tokens import get_encoding

        get_encoding("o200k_base")  # loaded once, outside the timings
        for _ in range(args.rounds):
            reference, text_tokens = tiktoken_alone(directory / "plots.jsonl")
            times["tiktoken"].append(reference)
            times["one by one"].append(tokenizer_floor(directory / "plots.jsonl"))
            elapsed, input_tokens, batches = planner_s(directory)
            times["planner"].append(elapsed)
            times["batched"].append(tokenizer_floor_batched(directory / "plots.jsonl"))
            if args.before:
                times["before"].append(planner_s(directory, args.before)[0])
        loads = {
            cold: statistics.median(
                encoding_load_s(directory / "cache", cold) for _ in range(args.load_rounds)
            )
            for cold in (True, False)
        }
    small = peak_memory_mb(args.memory_rows)
    large = peak_memory_mb(args.memory_rows * 10)
    median = {name: statistics.median(values) for name, values in times.items() if values}
    elapsed, reference = median["planner"], median["tiktoken"]
    floor = min(median["one by one"], median["batched"])
    print(f"rows                          {args.rows:,} ({args.rounds} rounds, medians)")
    print(f"input tokens (planner)        {input_tokens:,} in {batches} batches")
    print(f"text tokens (tiktoken alone)  {text_tokens:,}")
    print(f"planner                       {elapsed:.2f} s")
    if args.before:
        before = median["before"]
        print(f"planner of {args.before}  {before:.2f} s (ratio {before / floor:.2f} to the floor)")
    print(f"reference: tiktoken alone     {reference:.2f} s")
    print(f"ratio planner/tiktoken = {elapsed / reference:.2f}")
    print(f"floor: read, parse, count     {median['one by one']:.2f} s one by one")
    print(f"floor: read, parse, count     {median['batched']:.2f} s with the batch encoder")
    print(f"ratio planner/floor = {elapsed / floor:.2f}  (target <= 1.2)")
    print(f"o200k load, rank cache empty  {loads[True]:.2f} s (median of fresh processes)")
    print(f"o200k load, rank cache filled {loads[False]:.2f} s")
    print(f"ratio filled/empty = {loads[False] / loads[True]:.2f}")
    print(f"peak RSS {args.memory_rows:,} rows     {small:.0f} MB")
    print(f"peak RSS {args.memory_rows * 10:,} rows    {large:.0f} MB")
    print(f"memory ratio 10x rows = {large / small:.2f}  (target: flat, ~1.0)")


if __name__ == "__main__":
    main()
