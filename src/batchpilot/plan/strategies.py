"""Makespan and cost of each strategy, estimated from the plan and the job's limits.

- batch: waves of batches, each holding at most the queue capacity of input tokens, each
  taking `turnaround_s`;
- realtime: every request through the real-time API, paced by requests and tokens per minute
  and requests per day;
- hybrid: a share of the requests real-time while the rest goes in batches, the share chosen to
  finish soonest within the budget.

`hybrid_split` is the same choice made again while a run goes: from what is still pending, the
batches already in the queue, the turnaround learned so far and what is left of the day's
real-time requests.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

__all__ = [
    "Estimate",
    "SplitInputs",
    "StrategyInputs",
    "batch_waves",
    "estimate_strategies",
    "hybrid_split",
    "realtime_seconds",
]

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


def realtime_makespan(inputs: StrategyInputs, requests: float) -> float:
    """Limits as the API enforces them (and the lane paces them): buckets that start full and
    refill continuously, so a day's requests can go at once and more follow as the day refills."""
    per_request = (inputs.input_tokens + inputs.output_tokens) / max(1, inputs.requests)
    return realtime_seconds(requests, per_request, inputs.rpm, inputs.tpm, inputs.rpd)


def realtime_seconds(
    requests: float,
    tokens_per_request: float,
    rpm: int | None,
    tpm: int | None,
    rpd: int | None,
    day_left: float | None = None,
) -> float:
    """Seconds to send `requests` in real time: the per-minute limits at their steady rate, the
    day's limit with `day_left` requests (a full day unless given) available at once."""
    if requests <= 0:
        return 0.0
    times = [0.0]
    if rpm:
        times.append(requests / (rpm / 60))
    if tpm:
        times.append(requests * tokens_per_request / (tpm / 60))
    if rpd:
        burst = rpd if day_left is None else max(0.0, day_left)
        if requests > burst:
            times.append((requests - burst) / (rpd / DAY_S))
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


@dataclass(frozen=True)
class SplitInputs:
    """A hybrid run part way: what is pending (in neither lane yet) and what the lanes hold.

    `live` has one (seconds until it finishes, input tokens) pair per batch already in the queue;
    `day_left` is how many requests today's real-time allowance still holds (None: all of it).
    """

    requests: int
    input_tokens: int
    output_tokens: int
    queue_tokens: int | None
    turnaround_s: float
    rpm: int | None
    tpm: int | None
    rpd: int | None
    live: tuple[tuple[float, int], ...] = ()
    day_left: float | None = None


def batch_waves(
    queue_tokens: int | None, live: tuple[tuple[float, int], ...], turnaround_s: float, tokens: int
) -> list[tuple[float, int]]:
    """(seconds until it finishes, input tokens) of each future submission that carries `tokens`
    through the queue: as much as fits now, then more each time a batch in the queue finishes."""
    if tokens <= 0:
        return []
    if queue_tokens is None:
        return [(turnaround_s, tokens)]
    frees = sorted((max(0.0, seconds), held) for seconds, held in live)
    free = queue_tokens - sum(held for _, held in frees)
    now, left = 0.0, tokens
    waves: list[tuple[float, int]] = []
    while left > 0:
        if free > 0:
            amount = min(free, left)
            waves.append((now + turnaround_s, amount))
            heapq.heappush(frees, (now + turnaround_s, amount))
            free, left = free - amount, left - amount
            continue
        if not frees:
            break
        now, held = heapq.heappop(frees)
        free += held
    return waves


def hybrid_split(inputs: SplitInputs) -> Estimate:
    """How many of the pending requests to send in real time so that both lanes finish soonest
    (the batches in whole submissions from the front of the queue, the rest in real time); of
    the splits that finish equally soon, the one with the fewest real-time requests."""
    count = inputs.requests
    if count <= 0:
        return Estimate(0.0, None, 0)
    average = max(1.0, inputs.input_tokens / count)
    per_request = (inputs.input_tokens + inputs.output_tokens) / count

    def realtime(requests: int) -> float:
        return realtime_seconds(
            requests, per_request, inputs.rpm, inputs.tpm, inputs.rpd, inputs.day_left
        )

    best = Estimate(realtime(count), None, count)
    batched, carried = 0, 0
    for finish, tokens in batch_waves(
        inputs.queue_tokens, inputs.live, inputs.turnaround_s, inputs.input_tokens
    ):
        carried += tokens
        # whole requests per submission; the last one carries whatever is left
        last = carried >= inputs.input_tokens
        batched = count if last else min(count, batched + math.floor(tokens / average))
        makespan = max(finish, realtime(count - batched))
        if makespan <= best.makespan_s + 1e-9:
            best = Estimate(makespan, None, count - batched)
    return best
