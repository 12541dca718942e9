"""Benchmark: a batch job on the local model against llama.cpp called directly.

    python bench/local_lane.py [--requests 32] [--slots N] [--threads N] [--rounds 3]
        [--max-tokens 48]

The same `--requests` small JSON-constrained chat requests (temperature 0) go:
- through the local lane: `run_job` on a job with `provider: {kind: local, slots: N}`: the
  in-process local server with the llama responder, planning, one batch through the SDK, the
  batch engine feeding the model's N slots, ingest, validation and the export in input order;
- through llama.cpp alone: `xllamacpp.Server` with the same N parallel slots (and the same
  per-slot context), `handle_chat_completions` called from a pool of N threads.

Both times include loading the model. Rounds are interleaved (lane, direct, lane, ...) because
the machine is shared; reported: each side's median seconds and the ratio of the medians
(direct / lane: 1.0 means the lane is as fast as llama.cpp itself), plus how many of the lane's
answers are the same text as llama.cpp's. `--slots` defaults to what the local provider
chooses (`default_slots()`), `--threads` to llama.cpp's own choice (both sides get the same);
without the local runtime or model the benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "sunny": {"type": "boolean"},
        "temp_c": {"type": "integer", "minimum": -60, "maximum": 60},
    },
    "required": ["city", "sunny", "temp_c"],
    "additionalProperties": False,
}
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Rome"]
PROMPT = "Weather report for {city} (request {n}) as JSON."


def rows(count: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "city": CITIES[i % len(CITIES)], "n": i} for i in range(count)]


def run_lane(
    count: int, slots: int, threads: int | None, max_tokens: int
) -> tuple[float, list[str]]:
    from batchpilot.run import run_job
    from batchpilot.spec import job_from_dict

    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        directory = Path(tmp)
        data = rows(count)
        (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        (directory / "weather.schema.json").write_text(json.dumps(SCHEMA))
        job = job_from_dict(
            {
                "name": "bench-local",
                "provider": {"kind": "local", "slots": slots, "threads": threads},
                "model": "smollm2",
                "input": {"path": "rows.jsonl", "id_field": "id"},
                "prompt": {
                    "user": PROMPT.replace("{city}", "{{ city }}").replace("{n}", "{{ n }}")
                },
                "params": {"max_tokens": max_tokens, "temperature": 0},
                "response": {"schema": "weather.schema.json"},
                "output": {"path": "out.jsonl"},
            },
            base_dir=directory,
            environ={},
        )
        started = time.perf_counter()
        run_job(job, state_dir=directory / "state", poll_interval=0.05, progress=False)
        seconds = time.perf_counter() - started
        output = [json.loads(line) for line in (directory / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in output] == [row["id"] for row in data], "lane lost the order"
    answers = [json.dumps(row.get("output"), sort_keys=True) for row in output]
    return seconds, answers


def run_direct(
    count: int, slots: int, threads: int | None, max_tokens: int
) -> tuple[float, list[str]]:
    import xllamacpp

    from batchpilot.localmodel import SLOT_CONTEXT, default_model_path

    format_ = {
        "type": "json_schema",
        "json_schema": {"name": "w", "strict": True, "schema": SCHEMA},
    }
    bodies = [
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": PROMPT.format(city=r["city"], n=r["n"])}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "response_format": format_,
        }
        for r in rows(count)
    ]
    started = time.perf_counter()
    params = xllamacpp.CommonParams()
    params.model.path = str(default_model_path())
    params.n_ctx = SLOT_CONTEXT * slots
    params.n_parallel = slots
    params.verbosity = -1
    if threads is not None:
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(params)
    with ThreadPoolExecutor(slots) as pool:
        answers = list(pool.map(server.handle_chat_completions, bodies))
    seconds = time.perf_counter() - started
    del server
    texts = []
    for answer in answers:
        try:
            texts.append(
                json.dumps(json.loads(answer["choices"][0]["message"]["content"]), sort_keys=True)
            )
        except (KeyError, ValueError):
            texts.append("")
    return seconds, texts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--slots", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    try:
        import xllamacpp  # noqa: F401

        from batchpilot.localmodel import default_model_path, default_slots

        default_model_path()
    except Exception as exc:
        print(f"local lane benchmark skipped: {exc}")
        return 0
    slots = args.slots or default_slots()
    lane: list[float] = []
    direct: list[float] = []
    same = 0
    for _ in range(args.rounds):
        seconds, lane_answers = run_lane(args.requests, slots, args.threads, args.max_tokens)
        lane.append(seconds)
        seconds, direct_answers = run_direct(args.requests, slots, args.threads, args.max_tokens)
        direct.append(seconds)
        print(f"round {len(lane)}: lane {lane[-1]:.2f} s, direct {seconds:.2f} s", flush=True)
        same = sum(a == b for a, b in zip(lane_answers, direct_answers, strict=True))
    lane_median, direct_median = statistics.median(lane), statistics.median(direct)
    threads = args.threads or "llama.cpp's choice of"
    print(f"{args.requests} JSON requests, {slots} slots, {threads} threads, ", end="")
    print(f"max_tokens {args.max_tokens}")
    print(f"local lane (run_job):      {lane_median:7.2f} s  rounds {fmt(lane)}")
    print(f"llama.cpp direct:          {direct_median:7.2f} s  rounds {fmt(direct)}")
    print(f"ratio (direct / lane):     {direct_median / lane_median:7.2f}x")
    print(f"same answers as llama.cpp: {same}/{args.requests}")
    return 0


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
