"""Makespan and cost of each strategy, estimated from the plan and the job's limits.

- batch: waves of batches, each holding at most the queue capacity of input tokens, each
  taking `turnaround_s`;
- realtime: every request through the real-time API, paced by requests and tokens per minute
  and requests per day;
- hybrid: a share of the requests real-time while the rest goes in batches, the share chosen to
  finish soonest within the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Estimate", "StrategyInputs", "estimate_strategies"]

DAY_S = 86_400.0


@dataclass(frozen=True)
class StrategyInputs:
    requests: int
    input_tokens: int
    output_tokens: int
    batch_cost: float | None
    realtime_cost: float | None
    queue_tokens: int | None
    rpm: int | None
    tpm: int | None
    rpd: int | None
    turnaround_s: float
    budget: float | None = None


@dataclass(frozen=True)
class Estimate:
    makespan_s: float
    cost_usd: float | None
    realtime_requests: int = 0

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "makespan_s": round(self.makespan_s, 1),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "realtime_requests": self.realtime_requests,
        }


def batch_makespan(inputs: StrategyInputs, requests: int) -> float:
    if requests <= 0:
        return 0.0
    tokens = inputs.input_tokens * requests / max(1, inputs.requests)
    waves = 1 if not inputs.queue_tokens else math.ceil(tokens / inputs.queue_tokens)
    return max(1, waves) * inputs.turnaround_s


def realtime_makespan(inputs: StrategyInputs, requests: int) -> float:
    """Limits as the API enforces them (and the lane paces them): buckets that start full and
    refill continuously, so a day's requests can go at once and more follow as the day refills."""
    if requests <= 0:
        return 0.0
    per_request = (inputs.input_tokens + inputs.output_tokens) / max(1, inputs.requests)
    times = [0.0]
    if inputs.rpm:
        times.append(requests / (inputs.rpm / 60))
    if inputs.tpm:
        times.append(requests * per_request / (inputs.tpm / 60))
    if inputs.rpd and requests > inputs.rpd:
        times.append((requests - inputs.rpd) / (inputs.rpd / DAY_S))
    return max(times)


def _cost(inputs: StrategyInputs, realtime: int) -> float | None:
    if inputs.batch_cost is None or inputs.realtime_cost is None or inputs.requests == 0:
        return None
    share = realtime / inputs.requests
    return inputs.batch_cost * (1 - share) + inputs.realtime_cost * share


def estimate_strategies(inputs: StrategyInputs) -> dict[str, Estimate]:
    """The three strategies' makespan (seconds) and cost (USD) side by side."""
    total = inputs.requests
    batch = Estimate(batch_makespan(inputs, total), inputs.batch_cost, 0)
    realtime = Estimate(realtime_makespan(inputs, total), inputs.realtime_cost, total)
    best = batch
    steps = min(total, 400)
    for step in range(1, steps + 1):
        share = round(total * step / steps)
        cost = _cost(inputs, share)
        if inputs.budget is not None and cost is not None and cost > inputs.budget:
            break
        makespan = max(batch_makespan(inputs, total - share), realtime_makespan(inputs, share))
        if makespan < best.makespan_s - 1e-9:
            best = Estimate(makespan, cost, share)
    return {"batch": batch, "realtime": realtime, "hybrid": best}
