"""What a run needs to know beyond its requests: limits, money, retries, polling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from batchpilot.lanes.ratelimit import RateLimits
from batchpilot.pricing import PriceTable
from batchpilot.run.ingest import RetryPolicy

__all__ = ["RunSettings"]


@dataclass(frozen=True)
class RunSettings:
    """Limits for one run. Durations are seconds of wall time, except `turnaround_s`: seconds
    of the provider's clock, which runs `time_scale` times faster than the wall clock (1 but
    against a local server run in virtual time). Fixed once built: `dataclasses.replace` makes
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
