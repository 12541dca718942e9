"""Strategy estimates: the seeds' movie workload shape under tier-1 limits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from batchpilot.plan.strategies import (
    DAY_S,
    SplitInputs,
    StrategyInputs,
    batch_makespan,
    batch_waves,
    estimate_strategies,
    hybrid_split,
    realtime_makespan,
)

MOVIES = StrategyInputs(
    requests=42_000,
    input_tokens=18_000_000,
    output_tokens=4_200_000,
    batch_cost=10.0,
    realtime_cost=20.0,
    queue_tokens=1_600_000,
    rpm=500,
    tpm=200_000,
    rpd=10_000,
    turnaround_s=DAY_S,
)


def test_batch_only_goes_in_waves_of_the_queue() -> None:
    assert batch_makespan(MOVIES, 42_000) == 12 * DAY_S  # 18M / 1.6M = 11.25 -> 12 waves


def test_realtime_only_is_bound_by_requests_per_day() -> None:
    # 42,000 requests, 10,000 a day: the first day's 10,000 at once, then 32,000 as it refills
    assert realtime_makespan(MOVIES, 42_000) == 3.2 * DAY_S
    # within a day's allowance the per-minute limits decide: 500 requests of ~529 tokens are
    # 264,286 tokens, at 200,000 tokens per minute (tighter than 500 requests per minute)
    assert realtime_makespan(MOVIES, 500) == pytest.approx(500 * 22_200_000 / 42_000 / 200_000 * 60)


def test_hybrid_beats_both_and_costs_between_them() -> None:
    estimates = estimate_strategies(MOVIES)
    hybrid = estimates["hybrid"]
    assert hybrid.makespan_s < estimates["realtime"].makespan_s < estimates["batch"].makespan_s
    assert hybrid.cost_usd is not None
    assert 10.0 < hybrid.cost_usd < 20.0
    assert 0 < hybrid.realtime_requests < 42_000


def test_hybrid_respects_the_budget() -> None:
    tight = StrategyInputs(**{**MOVIES.__dict__, "budget": 11.0})
    hybrid = estimate_strategies(tight)["hybrid"]
    assert hybrid.cost_usd is not None and hybrid.cost_usd <= 11.0
    assert hybrid.makespan_s < estimate_strategies(tight)["batch"].makespan_s


def test_no_limits_means_one_wave_and_no_pacing() -> None:
    free = StrategyInputs(10, 1000, 100, 0.0, 0.0, None, None, None, None, 60.0)
    estimates = estimate_strategies(free)
    assert estimates["batch"].makespan_s == 60.0
    assert estimates["realtime"].makespan_s == 0.0


# The benchmark's shape (the movie job / 100): 420 requests of ~343 tokens, a queue of 19,000
# tokens (55 requests), 4 h batches; real time 5 RPM, 2,000 TPM, 100 RPD.
HOUR = 3600.0
SHAPE = SplitInputs(
    requests=420,
    input_tokens=144_060,
    output_tokens=42_000,
    queue_tokens=19_000,
    turnaround_s=4 * HOUR,
    rpm=5,
    tpm=2_000,
    rpd=100,
)


def test_waves_refill_the_queue_as_its_batches_finish() -> None:
    assert batch_waves(100, (), 100.0, 250) == [(100.0, 100), (200.0, 100), (300.0, 50)]
    # a queue holding 60 + 40 tokens: new batches follow each one that finishes
    held = ((10.0, 60), (30.0, 40))
    assert batch_waves(100, held, 100.0, 250) == [
        (110.0, 60),
        (130.0, 40),
        (210.0, 60),
        (230.0, 40),
        (310.0, 50),
    ]
    assert batch_waves(None, held, 100.0, 250) == [(100.0, 250)]
    assert batch_waves(100, (), 100.0, 0) == []


def test_the_split_finishes_both_lanes_with_the_last_wave() -> None:
    split = hybrid_split(SHAPE)
    # 5 waves of 55 end at 20 h; the 145 others fit in the day's 100 and 4.2 an hour after
    assert split.makespan_s == 20 * HOUR
    assert split.realtime_requests == 420 - 5 * 55
    # the same choice as the plan's estimate, up to its steps of 420/400 requests
    planned = estimate_strategies(
        StrategyInputs(420, 144_060, 42_000, None, None, 19_000, 5, 2_000, 100, 4 * HOUR)
    )["hybrid"]
    assert planned.makespan_s == split.makespan_s
    assert abs(planned.realtime_requests - split.realtime_requests) <= 2


def test_the_split_follows_the_learned_turnaround() -> None:
    quicker = hybrid_split(replace(SHAPE, turnaround_s=1 * HOUR))
    slower = hybrid_split(replace(SHAPE, turnaround_s=8 * HOUR))
    assert quicker.realtime_requests < hybrid_split(SHAPE).realtime_requests
    assert slower.realtime_requests > hybrid_split(SHAPE).realtime_requests
    assert (quicker.makespan_s, slower.makespan_s) == (6 * HOUR, 32 * HOUR)


def test_the_split_counts_the_batches_in_the_queue_and_the_day_left() -> None:
    busy = hybrid_split(replace(SHAPE, live=((3 * HOUR, 19_000),)))
    assert busy.makespan_s == 23 * HOUR  # every wave starts 3 h later
    spent_day = hybrid_split(replace(SHAPE, day_left=0.0))
    assert spent_day.realtime_requests < hybrid_split(SHAPE).realtime_requests
    # with the day used up, 90 requests at 100 a day take 21.6 h: inside 6 waves (24 h)
    assert (spent_day.makespan_s, spent_day.realtime_requests) == (24 * HOUR, 90)


def test_the_split_without_limits_or_work() -> None:
    free = SplitInputs(10, 1000, 100, None, 60.0, None, None, None)
    assert hybrid_split(free).realtime_requests == 10  # unpaced real time beats any batch
    assert hybrid_split(replace(free, requests=0, input_tokens=0)).realtime_requests == 0
    only_batch = replace(free, rpd=1, day_left=0.0)
    assert hybrid_split(only_batch).realtime_requests == 0
