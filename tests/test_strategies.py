"""Strategy estimates: the seeds' movie workload shape under tier-1 limits."""

from __future__ import annotations

import pytest

from batchpilot.plan.strategies import (
    DAY_S,
    StrategyInputs,
    batch_makespan,
    estimate_strategies,
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
