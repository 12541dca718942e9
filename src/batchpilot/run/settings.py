"""What a run needs to know beyond its requests: limits, money, retries, polling; and how a
job's settings are read into them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from batchpilot.lanes.ratelimit import RateLimits
from batchpilot.plan.job import flex_offered, queue_capacity
from batchpilot.pricing import PriceTable, prices_for, tier_limits
from batchpilot.providers.base import FLEX, STANDARD
from batchpilot.run.defaults import default_max_poll_interval, default_poll_interval
from batchpilot.run.ingest import RetryPolicy
from batchpilot.spec import JobSpec, LimitsSpec
from batchpilot.spec.model import parse_deadline
from batchpilot.store import RunRecord

__all__ = ["RunSettings", "limit_settings", "realtime_tier", "run_settings"]


@dataclass(frozen=True)
class RunSettings:
    """Limits for one run. Durations are seconds of wall time, except `turnaround_s`: seconds
    of the provider's clock, which runs `time_scale` times faster than the wall clock (1 but
    against a local server run in virtual time). `tier` is the real-time lane's service tier
    (flex falls back to standard `flex_fallback_s` before the deadline; `flex_latency_s` is how
    long a flex answer is expected to take). Fixed once built: `dataclasses.replace` makes
    another."""

    requests_per_batch: int = 50_000
    bytes_per_batch: int = 190_000_000
    tokens_per_batch: Callable[[str], int | None] = field(default=lambda model: None)
    queue_tokens: Callable[[str], int | None] = field(default=lambda model: None)
    budget_usd: float | None = None
    prices: PriceTable | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_interval_s: float = 5.0
    max_poll_interval_s: float = 60.0
    not_found_grace: int = 10
    detach: bool = False
    cancel_on_exit: bool = False
    strategy: str = "batch"
    deadline: datetime | None = None
    realtime: RateLimits = field(default_factory=RateLimits)
    concurrency: int = 16
    realtime_timeout_s: float = 600.0
    turnaround_s: float = 12 * 3600.0
    time_scale: float = 1.0
    tier: str = STANDARD
    flex_fallback_s: float = 900.0
    flex_latency_s: float = 30.0


def limit_settings(
    limits: LimitsSpec,
    *,
    local: bool,
    tier: int,
    budget: float | None,
    prices: PriceTable,
    poll_interval: float | None,
    detach: bool,
    cancel_on_exit: bool,
) -> RunSettings:
    """Settings from a job's limits alone (a requests file has no more than these)."""

    def queue(model: str) -> int | None:
        return queue_capacity(limits, model, tier=tier, local=local)

    def per_batch(model: str) -> int | None:
        return limits.tokens_per_batch if limits.tokens_per_batch is not None else queue(model)

    interval = poll_interval if poll_interval is not None else default_poll_interval(local)
    return RunSettings(
        requests_per_batch=limits.requests_per_batch,
        bytes_per_batch=limits.bytes_per_batch,
        tokens_per_batch=per_batch,
        queue_tokens=queue,
        budget_usd=budget,
        prices=prices,
        retry=RetryPolicy(limits.max_attempts),
        poll_interval_s=interval,
        max_poll_interval_s=default_max_poll_interval(local, interval),
        detach=detach,
        cancel_on_exit=cancel_on_exit,
    )


def run_settings(
    job: JobSpec,
    *,
    poll_interval: float | None = None,
    detach: bool = False,
    cancel_on_exit: bool = False,
    run: RunRecord | None = None,
    prices: PriceTable | None = None,
) -> RunSettings:
    """Everything a runner needs to know about a job beyond its requests: its limits, then its
    strategy, deadline (durations count from the start of `run`) and real-time limits."""
    local = job.provider.kind == "local"
    settings = limit_settings(
        job.limits,
        local=local,
        tier=job.provider.tier,
        budget=job.budget.max_usd,
        prices=prices or prices_for(job.provider.kind, job.prices or None),
        poll_interval=poll_interval,
        detach=detach,
        cancel_on_exit=cancel_on_exit,
    )
    deadline = None
    if job.deadline is not None:
        started = datetime.fromisoformat(run.created_at_utc.replace("Z", "+00:00")) if run else None
        deadline = parse_deadline(job.deadline, now=started)
    tier = tier_limits(job.model, job.provider.tier)
    return replace(
        settings,
        strategy=job.strategy,
        deadline=deadline,
        realtime=RateLimits(
            rpm=job.realtime.rpm or (None if local else tier.rpm),
            tpm=job.realtime.tpm or (None if local else tier.tpm),
            rpd=job.realtime.rpd or (None if local else tier.rpd),
        ),
        concurrency=job.realtime.concurrency,
        realtime_timeout_s=job.realtime.timeout,
        turnaround_s=job.estimate.batch_turnaround_hours * 3600,
        tier=realtime_tier(job, settings.prices),
        flex_fallback_s=job.realtime.flex_fallback,
        flex_latency_s=job.estimate.flex_latency_seconds,
    )


def realtime_tier(job: JobSpec, prices: PriceTable | None) -> str:
    """The real-time lane's service tier: flex for the flex strategy; for the hybrid, flex where
    the job's real-time requests can go at it (see `flex_offered`)."""
    if job.strategy == "flex":
        return FLEX
    if job.strategy == "hybrid" and flex_offered(job, prices):
        return FLEX
    return STANDARD
