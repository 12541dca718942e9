"""Benchmark: checking answers against a response schema, beside parsing their lines.

    python bench/answer_check.py [--answers 50000] [--rounds 3] [--broken 0.01]

Every answer of a job with a response schema is parsed and checked against the schema as it is
ingested (and as the real-time lane receives it). This times `AnswerCheck` on the bodies of
`--answers` output lines (a strict structured output: a list of deaths and a tone), with the
compiled validator (`jsonschema_rs`) and with `jsonschema` alone, beside the reference: orjson
parsing the same lines, which ingest does anyway. A share of the answers (`--broken`, one in a
hundred by default; a strict structured output seldom breaks its schema) lacks a field: its
reason comes from `jsonschema` either way. Rounds interleaved; medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import orjson

from batchpilot.run.ingest import collector_paused
from batchpilot.validate import AnswerCheck

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "deaths": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "cause": {"type": "string"},
                    "on_screen": {"type": "boolean"},
                },
                "required": ["name", "cause", "on_screen"],
                "additionalProperties": False,
            },
        },
        "tone": {"type": "string", "enum": ["sad", "happy", "dark"]},
    },
    "required": ["deaths", "tone"],
    "additionalProperties": False,
}


def line(i: int, every: int) -> bytes:
    deaths = [{"name": f"Tom {i}", "cause": "poison", "on_screen": True}]
    if every and i % every == every - 1:
        deaths.append({"name": "Ana", "cause": "storm"})  # no on_screen: breaks the schema
    content = orjson.dumps({"deaths": deaths, "tone": "sad"}).decode()
    message = {"role": "assistant", "content": content, "refusal": None}
    body = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 420, "completion_tokens": 24, "total_tokens": 444},
    }
    response = {"status_code": 200, "request_id": f"req_{i}", "body": body}
    return orjson.dumps({"id": f"batch_req_{i}", "custom_id": f"bp-{i}", "response": response})


def timed(work: Any) -> float:
    with collector_paused():
        started = time.perf_counter()
        work()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broken", type=float, default=0.01, help="share that breaks the schema")
    args = parser.parse_args()
    every = round(1 / args.broken) if args.broken > 0 else 0
    lines = [line(i, every) for i in range(args.answers)]
    bodies = [orjson.loads(raw)["response"]["body"] for raw in lines]
    compiled, alone = AnswerCheck(SCHEMA), AnswerCheck(SCHEMA)
    alone.valid = None
    assert compiled.valid is not None, "the compiled validator did not take the schema"
    reasons = [compiled(body) for body in bodies]
    assert reasons == [alone(body) for body in bodies], "the two ways disagree"
    broken = sum(reason is not None for reason in reasons)
    parse_s, compiled_s, alone_s = [], [], []
    for _ in range(args.rounds):
        parse_s.append(timed(lambda: [orjson.loads(raw) for raw in lines]))
        compiled_s.append(timed(lambda: [compiled(body) for body in bodies]))
        alone_s.append(timed(lambda: [alone(body) for body in bodies]))
    parse, fast, slow = (statistics.median(t) for t in (parse_s, compiled_s, alone_s))
    per = 1e6 / args.answers
    print(f"answers                                 {args.answers:,} ({broken:,} break the schema)")
    print(f"reference: orjson parse of their lines  {parse:.3f} s ({parse * per:.1f} us each)")
    print(f"check, compiled validator               {fast:.3f} s ({fast * per:.1f} us each)")
    print(f"check, jsonschema alone                 {slow:.3f} s ({slow * per:.1f} us each)")
    print(f"ratio check/parse = {fast / parse:.2f} (jsonschema alone: {slow / parse:.2f})")
    print(f"speed-up of the check = {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
