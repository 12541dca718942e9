"""Makespan and cost of each strategy, estimated from the plan and the job's limits.

- batch: waves of batches, each holding at most the queue capacity of input tokens, each
  taking `turnaround_s`;
- realtime: every request through the real-time API, paced by requests and tokens per minute
  and requests per day;
- flex: every request through the real-time API's flex tier at batch prices, paced alike and
  slower: at most `concurrency` answers at once, each taking `flex_latency_s`;
- hybrid: a share of the requests real-time (at the standard or the flex tier) while the rest
  goes in batches, the share chosen to finish soonest within the budget; with a deadline, the
  cheapest split that meets it (so flex where it lowers the cost and still meets it).

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
    flex_cost: float | None = None
    """The whole plan at the flex tier (None: the provider or the model has no flex tier)."""
    flex_latency_s: float = 30.0
    concurrency: int = 16
    deadline_s: float | None = None


@dataclass(frozen=True)
class Estimate:
    """A strategy's makespan and cost; `realtime_requests` go through the real-time API at
    `tier` (standard or flex), the rest in batches."""

    makespan_s: float
    cost_usd: float | None
    realtime_requests: int = 0
    tier: str = "standard"

    def as_json(self) -> dict[str, float | int | str | None]:
        return {
            "makespan_s": round(self.makespan_s, 1),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "realtime_requests": self.realtime_requests,
            "tier": self.tier,
        }


def batch_makespan(inputs: StrategyInputs, requests: int) -> float:
    if requests <= 0:
        return 0.0
    tokens = inputs.input_tokens * requests / max(1, inputs.requests)
    waves = 1 if not inputs.queue_tokens else math.ceil(tokens / inputs.queue_tokens)
    return max(1, waves) * inputs.turnaround_s


def realtime_makespan(inputs: StrategyInputs, requests: float, *, flex: bool = False) -> float:
    """Limits as the API enforces them (and the lane paces them): buckets that start full and
    refill continuously, so a day's requests can go at once and more follow as the day refills;
    at the flex tier, also the lane's concurrency over the flex latency."""
    per_request = (inputs.input_tokens + inputs.output_tokens) / max(1, inputs.requests)
    latency = inputs.flex_latency_s if flex else 0.0
    return realtime_seconds(
        requests,
        per_request,
        inputs.rpm,
        inputs.tpm,
        inputs.rpd,
        latency_s=latency,
        concurrency=inputs.concurrency,
    )


def realtime_seconds(
    requests: float,
    tokens_per_request: float,
    rpm: int | None,
    tpm: int | None,
    rpd: int | None,
    day_left: float | None = None,
    *,
    latency_s: float = 0.0,
    concurrency: int = 1,
) -> float:
    """Seconds to send `requests` in real time: the per-minute limits at their steady rate, the
    day's limit with `day_left` requests (a full day unless given) available at once, and
    `concurrency` answers at a time when each takes `latency_s`."""
    if requests <= 0:
        return 0.0
    times = [requests * latency_s / max(1, concurrency)]
    if rpm:
        times.append(requests / (rpm / 60))
    if tpm:
        times.append(requests * tokens_per_request / (tpm / 60))
    if rpd:
        burst = rpd if day_left is None else max(0.0, day_left)
        if requests > burst:
            times.append((requests - burst) / (rpd / DAY_S))
    return max(times)


def _cost(inputs: StrategyInputs, realtime: int, *, flex: bool = False) -> float | None:
    rate = inputs.flex_cost if flex else inputs.realtime_cost
    if inputs.batch_cost is None or rate is None or inputs.requests == 0:
        return None
    share = realtime / inputs.requests
    return inputs.batch_cost * (1 - share) + rate * share


def _better(candidate: Estimate, best: Estimate, deadline_s: float | None) -> bool:
    """Without a deadline: sooner, then cheaper. With one: cheaper among those that meet it
    (fewer real-time requests at the same price), sooner while none does."""
    sooner = candidate.makespan_s < best.makespan_s - 1e-9
    tied = abs(candidate.makespan_s - best.makespan_s) <= 1e-9
    cheaper = (
        candidate.cost_usd is not None
        and best.cost_usd is not None
        and candidate.cost_usd < best.cost_usd - 1e-12
    )
    if deadline_s is None:
        return sooner or (tied and cheaper)
    meets, met = candidate.makespan_s <= deadline_s, best.makespan_s <= deadline_s
    if meets and met:
        return cheaper or (sooner and not _dearer(candidate, best))
    return meets or (not met and sooner)


def _dearer(candidate: Estimate, best: Estimate) -> bool:
    if candidate.cost_usd is None or best.cost_usd is None:
        return False
    return candidate.cost_usd > best.cost_usd + 1e-12


def estimate_strategies(inputs: StrategyInputs) -> dict[str, Estimate]:
    """Each strategy's makespan (seconds) and cost (USD) side by side; `flex` only when the
    plan has a flex price."""
    total = inputs.requests
    batch = Estimate(batch_makespan(inputs, total), inputs.batch_cost, 0)
    realtime = Estimate(realtime_makespan(inputs, total), inputs.realtime_cost, total)
    tiers = [False] if inputs.flex_cost is None else [False, True]
    best = batch
    steps = min(total, 400)
    for step in range(1, steps + 1):
        share = round(total * step / steps)
        for flex in tiers:
            cost = _cost(inputs, share, flex=flex)
            if inputs.budget is not None and cost is not None and cost > inputs.budget:
                continue
            makespan = max(
                batch_makespan(inputs, total - share),
                realtime_makespan(inputs, share, flex=flex),
            )
            candidate = Estimate(makespan, cost, share, "flex" if flex else "standard")
            if _better(candidate, best, inputs.deadline_s):
                best = candidate
    found = {"batch": batch, "realtime": realtime}
    if inputs.flex_cost is not None:
        flex_makespan = realtime_makespan(inputs, total, flex=True)
        found["flex"] = Estimate(flex_makespan, inputs.flex_cost, total, "flex")
    found["hybrid"] = best
    return found


@dataclass(frozen=True)
class SplitInputs:
    """A hybrid run part way: what is pending (in neither lane yet) and what the lanes hold.

    `live` has one (seconds until it finishes, input tokens) pair per batch already in the queue;
    `day_left` is how many requests today's real-time allowance still holds (None: all of it);
    `latency_s` is how long one real-time answer takes with `concurrency` at once (the flex
    tier's; 0: only the rate limits pace the lane).
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
    latency_s: float = 0.0
    concurrency: int = 1


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
            requests,
            per_request,
            inputs.rpm,
            inputs.tpm,
            inputs.rpd,
            inputs.day_left,
            latency_s=inputs.latency_s,
            concurrency=inputs.concurrency,
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
