"""Benchmark: batch, real time and hybrid on the movie workload's shape, on the local server.

    python bench/hybrid_movies.py [--scale 100] [--time-scale 3600] [--turnaround-hours 4]
        [--flex-latency 30] [--flex-refusal-rate 0.1] [--only hybrid-flex]

The seeds' movie job (about 42,000 requests, 18M input tokens) under tier-1 limits (2M enqueued
tokens for gpt-4o-mini; real time 500 RPM, 10,000 RPD, 200,000 TPM) is run for real through the
local server, with every capacity divided by `--scale` (requests, tokens, queue, RPM, RPD, TPM), so
that the number of batch waves and the days of real-time requests, and so the makespans, stay
those of the full job. The server runs `--time-scale` times faster than the wall clock; the
real-time lane's token buckets follow the same virtual clock. Each batch takes
`--turnaround-hours` (virtual) from creation to completion.

Reported for each strategy: makespan (virtual hours) and cost, and for the hybrid the ratio of its
makespan to the lower bound computed from the same limits (target: at most 1.15). Two bounds are
computed, both true lower bounds, and the tighter one counts: the fluid bound, the best split of
the requests between a batch lane at its full queue throughput (queue tokens per turnaround, not
rounded to whole waves) and a real-time lane at its full rate; and the bound that keeps the waves
whole (see `whole_turnaround_bound_h`), since a batch comes back a whole turnaround after it is
created. Both ratios are printed.

`hybrid-flex` is the hybrid with its real-time share at OpenAI's flex tier, which the server
models: each flex answer takes `--flex-latency` virtual seconds and `--flex-refusal-rate` of the
tries are refused (429 `resource_unavailable`). Its cost is reported against the lower bound of
the cost, every request at the batch price (the batch strategy's cost).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchpilot.lanes import RateLimits, RealtimeLane, Throttle
from batchpilot.plan import plan_job
from batchpilot.plan.strategies import StrategyInputs, realtime_makespan
from batchpilot.pricing import PriceTable
from batchpilot.providers.openai import OpenAIProvider
from batchpilot.run.config import RunConfig
from batchpilot.run.identity import identity_json, run_id_for, spec_json
from batchpilot.run.runner import Runner
from batchpilot.run.settings import limit_settings
from batchpilot.run.store_sink import StoreSink
from batchpilot.server import LocalServer, RateLimit, ServerConfig
from batchpilot.spec import job_from_dict
from batchpilot.store import RunRecord, SQLiteStore, utc_now

WORDS = (
    "the",
    "a",
    "storm",
    "island",
    "sailor",
    "queen",
    "war",
    "night",
    "train",
    "secret",
    "brother",
    "poison",
)
MODEL = "gpt-4o-mini"
TIER1 = {"queue": 2_000_000, "rpm": 500, "rpd": 10_000, "tpm": 200_000}
STRATEGIES = ("batch", "realtime", "hybrid", "hybrid-flex")


def make_rows(path: Path, count: int, words: int) -> None:
    rng = random.Random(7)
    with path.open("w") as handle:
        for i in range(count):
            plot = " ".join(rng.choice(WORDS) for _ in range(words))
            handle.write(json.dumps({"id": f"m{i}", "plot": plot}) + "\n")


def run_strategy(name: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    strategy = name.removesuffix("-flex")
    flex = name.endswith("-flex")
    scale, speed = args.scale, args.time_scale
    limits = {key: max(1, value // scale) for key, value in TIER1.items()}
    turnaround_s = args.turnaround_hours * 3600
    config = ServerConfig(
        state_dir=directory / f"server-{name}",
        time_scale=speed,
        validation_delay_s=turnaround_s,
        finalizing_delay_s=0,
        processing_tokens_per_s=1e9,
        queue_limits={MODEL: limits["queue"]},
        rate_limits={MODEL: RateLimit(rpm=limits["rpm"], tpm=limits["tpm"], rpd=limits["rpd"])},
        flex_latency_s=args.flex_latency / speed,
        flex_refusal_rate=args.flex_refusal_rate,
    )
    with LocalServer(config) as server:
        job = job_from_dict(
            {
                "name": f"movies-{name}",
                "provider": {"kind": "compatible", "base_url": server.base_url},
                "model": MODEL,
                "strategy": strategy,
                "input": {"path": "plots.jsonl", "id_field": "id"},
                "prompt": {"user": "Who dies in this plot? {{ plot }}"},
                "params": {"max_tokens": 100},
                "estimate": {"output_tokens": 100, "batch_turnaround_hours": args.turnaround_hours},
                "limits": {"queue_tokens": limits["queue"], "queue_fraction": 0.95},
                "realtime": {"rpm": limits["rpm"], "tpm": limits["tpm"], "rpd": limits["rpd"]},
            },
            base_dir=directory,
        )
        store = SQLiteStore(directory / f"state-{name}.sqlite3")
        run_id = run_id_for(job.name, identity_json(job))
        sink = StoreSink(store, run_id)
        store.create_run(
            RunRecord(
                run_id,
                job.name,
                spec_json(job),
                "compatible",
                job.endpoint,
                "planned",
                None,
                utc_now(),
            )
        )
        plan = plan_job(job, sink=sink)
        prices = PriceTable.load()
        settings = limit_settings(
            job.limits,
            local=False,
            tier=1,
            budget=None,
            prices=prices,
            poll_interval=0.02,
            detach=False,
            cancel_on_exit=False,
        )
        settings = replace(
            settings,
            strategy=strategy,
            max_poll_interval_s=60.0 / speed,  # a minute of virtual time between polls
            realtime=RateLimits(limits["rpm"], limits["tpm"], limits["rpd"]),
            turnaround_s=turnaround_s,
            time_scale=speed,
            tier="flex" if flex else "standard",
            flex_latency_s=args.flex_latency,
        )
        provider = OpenAIProvider(
            __import__("openai").OpenAI(base_url=server.base_url, api_key="x", max_retries=5),
            name="openai" if flex else "compatible",
        )
        lane = None
        if strategy != "batch":
            start_real, start_virtual = time.monotonic(), server.admin.now()

            def virtual() -> float:
                return start_virtual + (time.monotonic() - start_real) * speed

            async def virtual_sleep(seconds: float) -> None:
                import asyncio

                await asyncio.sleep(seconds / speed)

            throttle = Throttle(settings.realtime, clock=virtual, sleep=virtual_sleep)
            lane = RealtimeLane(
                provider.realtime(),
                store,
                run_id,
                limits=settings.realtime,
                concurrency=32,
                prices=prices,
                retry=settings.retry,
                throttle=throttle,
                tier=settings.tier,
                # a flex refusal waits seconds of virtual time, not of the wall clock
                base_backoff_s=30 / speed,
                max_backoff_s=600 / speed,
            )
        config = RunConfig(run_id, settings, directory / f"files-{name}")
        runner = Runner(store, provider, config, lane)
        started = server.admin.now()
        status = runner.run()
        makespan = server.admin.now() - started
        spent, _ = store.money(run_id)
        refused = lane.report.flex_refused if lane is not None else 0
        store.close()
        provider.close()
    assert status.finished, status
    return {
        "makespan_h": makespan / 3600,
        "cost": spent,
        "requests": plan.requests,
        "input_tokens": plan.input_tokens,
        "limits": limits,
        "flex_refused": refused,
    }


def _inputs(
    requests: int, tokens: int, limits: dict[str, int], turnaround_h: float
) -> StrategyInputs:
    return StrategyInputs(
        requests,
        tokens,
        requests * 100,
        None,
        None,
        limits["queue"],
        limits["rpm"],
        limits["tpm"],
        limits["rpd"],
        turnaround_h * 3600,
    )


def lower_bound_h(requests: int, tokens: int, limits: dict[str, int], turnaround_h: float) -> float:
    """The best split between a batch lane at its full queue throughput (the whole queue limit
    every turnaround, without rounding to whole waves) and a real-time lane at its full rate."""
    inputs = _inputs(requests, tokens, limits, turnaround_h)
    best = float("inf")
    for realtime in range(requests + 1):
        batch_tokens = tokens * (requests - realtime) / requests
        batch_s = batch_tokens / limits["queue"] * turnaround_h * 3600
        best = min(best, max(batch_s, realtime_makespan(inputs, realtime)))
    return best / 3600


def whole_turnaround_bound_h(
    requests: int, tokens: int, limits: dict[str, int], turnaround_h: float
) -> float:
    """The same split, with each batch taking the whole turnaround, as on this server.

    A batch finishing by T was created by T - turnaround; batches created less than one
    turnaround apart are in the queue together, so the ones created in any window of one
    turnaround hold at most the queue limit of tokens, and [0, T - turnaround] is covered by
    floor(T / turnaround) such windows: by T the batches carry at most that many queues of
    tokens. The real-time lane carries the rest (fractions of requests allowed, so this stays a
    lower bound)."""
    inputs = _inputs(requests, tokens, limits, turnaround_h)
    per_request = tokens / requests
    best = float("inf")
    for waves in range(math.ceil(tokens / limits["queue"]) + 1):
        realtime = max(0.0, requests - waves * limits["queue"] / per_request)
        realtime_s = realtime_makespan(inputs, realtime)
        # fewer waves finish sooner, but not before the real-time lane, nor the last wave
        best = min(best, max(waves * turnaround_h * 3600, realtime_s))
    return best / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=3600.0)
    parser.add_argument("--turnaround-hours", type=float, default=4.0)
    parser.add_argument("--flex-latency", type=float, default=30.0)
    parser.add_argument("--flex-refusal-rate", type=float, default=0.1)
    parser.add_argument(
        "--only", nargs="*", choices=STRATEGIES, help="run these (the batch always runs)"
    )
    args = parser.parse_args()
    chosen = ["batch", *(s for s in (args.only or STRATEGIES) if s != "batch")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        make_rows(directory / "plots.jsonl", 42_000 // args.scale, 330)
        results = {s: run_strategy(s, args, directory) for s in chosen}
    first = results["batch"]
    bound = lower_bound_h(
        first["requests"], first["input_tokens"], first["limits"], args.turnaround_hours
    )
    print(
        f"{first['requests']:,} requests, {first['input_tokens']:,} input tokens "
        f"(the movie job / {args.scale}); limits {first['limits']}"
    )
    for name, result in results.items():
        refused = f"; {result['flex_refused']} flex refusals" if name.endswith("-flex") else ""
        print(
            f"{name:<11} makespan {result['makespan_h']:7.1f} h   cost ${result['cost']:.4f} "
            f"(x{args.scale} for the full job){refused}"
        )
    whole = whole_turnaround_bound_h(
        first["requests"], first["input_tokens"], first["limits"], args.turnaround_hours
    )
    print(f"bound with whole turnarounds {whole:.1f} h ({whole / bound:.2f} x the fluid bound)")
    tightest = max(bound, whole)
    for name in ("hybrid", "hybrid-flex"):
        if name not in results:
            continue
        hybrid = results[name]["makespan_h"]
        print(f"{name}: fluid bound {bound:.1f} h; {name} / fluid bound = {hybrid / bound:.2f}")
        print(
            f"{name}: lower bound {tightest:.1f} h (the tighter); {name} / lower bound = "
            f"{hybrid / tightest:.2f} (target <= 1.15); cost / batch cost (the cheapest) = "
            f"{results[name]['cost'] / first['cost']:.2f}"
        )


if __name__ == "__main__":
    main()
