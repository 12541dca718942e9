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


# the flex tier -----------------------------------------------------------------------------

FLEX_MOVIES = replace(MOVIES, flex_cost=10.0, flex_latency_s=30.0, concurrency=16)


def test_flex_costs_the_batch_price_and_is_paced_like_real_time() -> None:
    estimates = estimate_strategies(FLEX_MOVIES)
    flex = estimates["flex"]
    assert (flex.cost_usd, flex.realtime_requests, flex.tier) == (10.0, 42_000, "flex")
    # 42,000 answers of 30 s, 16 at a time, take 0.9 days: the day's limit still decides
    assert flex.makespan_s == estimates["realtime"].makespan_s == 3.2 * DAY_S
    slow = estimate_strategies(replace(FLEX_MOVIES, flex_latency_s=600.0))["flex"]
    assert slow.makespan_s == pytest.approx(42_000 * 600 / 16)
    assert "flex" not in estimate_strategies(MOVIES)


def test_the_hybrid_takes_flex_when_it_is_as_quick_and_cheaper() -> None:
    standard = estimate_strategies(MOVIES)["hybrid"]
    hybrid = estimate_strategies(FLEX_MOVIES)["hybrid"]
    assert hybrid.tier == "flex"
    assert hybrid.makespan_s == pytest.approx(standard.makespan_s)
    assert hybrid.cost_usd == pytest.approx(10.0) and standard.cost_usd is not None
    assert standard.cost_usd > 10.0


def test_under_a_deadline_the_hybrid_is_the_cheapest_split_that_meets_it() -> None:
    slow = replace(FLEX_MOVIES, flex_latency_s=120.0, deadline_s=5 * DAY_S)
    hybrid = estimate_strategies(slow)["hybrid"]
    without = estimate_strategies(replace(slow, flex_cost=None))["hybrid"]
    assert hybrid.makespan_s <= 5 * DAY_S and without.makespan_s <= 5 * DAY_S
    assert hybrid.tier == "flex" and without.tier == "standard"
    assert hybrid.cost_usd is not None and without.cost_usd is not None
    assert hybrid.cost_usd < without.cost_usd
    # a deadline nothing meets: the soonest split, whatever it costs
    rushed = estimate_strategies(replace(slow, deadline_s=60.0))["hybrid"]
    assert rushed.makespan_s == pytest.approx(estimate_strategies(MOVIES)["hybrid"].makespan_s)


def test_a_slow_flex_lane_takes_a_smaller_share_of_the_split() -> None:
    quick = hybrid_split(SHAPE)
    slow = hybrid_split(replace(SHAPE, latency_s=3600.0, concurrency=2))
    assert slow.realtime_requests < quick.realtime_requests
