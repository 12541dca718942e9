"""Which lane takes what, and when: the strategies' shares, the deadline, and what the run has
learned of the provider (how long a batch takes, how many tokens its queue holds).

The functions are the decisions themselves, from plain values; `Scheduler` reads what they
need from the store and records what it chose.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import Enum

from batchpilot.formatting import duration
from batchpilot.lanes.ratelimit import Throttle
from batchpilot.plan.strategies import Estimate, SplitInputs, hybrid_split
from batchpilot.providers.base import FLEX
from batchpilot.run.config import RunConfig
from batchpilot.run.share import LaneShare
from batchpilot.store import BatchRecord, BatchState, Store

__all__ = [
    "IN_QUEUE",
    "LIVE",
    "Mode",
    "Scheduler",
    "announce_due",
    "capacity",
    "choose_mode",
    "deadline_near",
    "in_queue",
    "learn_capacity",
    "poll_cap",
    "turnaround",
    "utc",
]

LIVE = (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING, BatchState.SUBMITTED)
IN_QUEUE = (BatchState.PLANNED, *LIVE)
# The split is chosen again at most every poll interval, and, since adding up what is pending
# reads every pending request, no sooner than this many times as long as that took: on a run of
# millions it takes at most a twentieth of the time.
REBALANCE_SPACING = 20.0


class Mode(Enum):
    """What the lanes do this round."""

    BATCH = "batch"
    """Batches only."""
    REALTIME = "realtime"
    """Real time only (at the standard or the flex tier): batches left unsent (by an earlier run
    with another strategy) are dropped."""
    DEADLINE = "deadline"
    """A batch would end past the deadline: everything pending goes real time, unsent batches
    are dropped, and live ones cancelled."""
    HYBRID = "hybrid"
    """Both lanes, the real-time share chosen again so that both finish together."""


def choose_mode(strategy: str, near_deadline: bool) -> Mode:
    if strategy == "batch":
        return Mode.BATCH
    if strategy in ("realtime", "flex"):
        return Mode.REALTIME
    return Mode.DEADLINE if near_deadline else Mode.HYBRID


def utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def turnaround(batches: Iterable[BatchRecord], default_s: float, time_scale: float) -> float:
    """Seconds a batch takes (provider time): the median of the completed batches among
    `batches` (a cancelled or failed one says nothing about it), else `default_s`."""
    spans = sorted(
        (utc(b.finished_at_utc) - utc(b.submitted_at_utc)).total_seconds()
        for b in batches
        if b.submitted_at_utc and b.finished_at_utc and b.remote_status == "completed"
    )
    if not spans:
        return default_s
    return spans[len(spans) // 2] * time_scale


def deadline_near(
    deadline: datetime | None, turnaround_s: float, time_scale: float, now: datetime
) -> bool:
    """Whether a batch created now would end past the deadline."""
    if deadline is None:
        return False
    return now + timedelta(seconds=turnaround_s / time_scale) > deadline


def in_queue(
    batches: Iterable[BatchRecord],
    model: str,
    turnaround_s: float,
    time_scale: float,
    now: datetime,
) -> tuple[tuple[float, int], ...]:
    """(seconds until it finishes, input tokens) of each batch of `model` among `batches`."""
    held = []
    for batch in batches:
        if batch.model != model:
            continue
        elapsed = 0.0
        if batch.submitted_at_utc:
            elapsed = (now - utc(batch.submitted_at_utc)).total_seconds() * time_scale
        held.append((max(0.0, turnaround_s - elapsed), batch.input_tokens))
    return tuple(held)


def capacity(configured: int | None, learned: int | None) -> int | None:
    """The input tokens the provider's queue holds for a model: the lower of the configured
    limit and the one learned from a refusal (None: no limit known)."""
    if learned is None:
        return configured
    return learned if configured is None else min(configured, learned)


def learn_capacity(batch_tokens: int, others: int, known: int | None) -> int:
    """The queue limit learned from a batch of `batch_tokens` refused for the enqueued-token
    limit while `others` tokens were in the queue: a little below what the queue then held
    (the batch alone when nothing else was), and never above what an earlier refusal taught
    (whose "others" may have counted batches that were refused too)."""
    learned = int((others + batch_tokens) * 0.9) if others else int(batch_tokens * 0.8)
    return max(1, learned if known is None else min(known, learned))


def poll_cap(
    submitted_at_utc: str | None,
    turnaround_s: float,
    *,
    time_scale: float,
    deadline: datetime | None,
    poll_interval_s: float,
    max_poll_interval_s: float,
    now: datetime,
) -> float:
    """The longest wait between two polls of a batch: a quarter of the time it may still take
    (the turnaround, learned or estimated, and the deadline), a twentieth of the turnaround
    once it is late; never below the poll interval nor above the maximum."""
    wall = turnaround_s / time_scale
    left = wall
    if submitted_at_utc:
        left -= (now - utc(submitted_at_utc)).total_seconds()
    if deadline is not None:
        left = min(left, (deadline - now).total_seconds())
    cap = left / 4 if left > 0 else wall / 20
    return min(max_poll_interval_s, max(poll_interval_s, cap))


def announce_due(planned: int, last: int | None, total: int) -> bool:
    """Whether the hybrid split moved by more than the real-time lane's own progress and
    rounding (one in a hundred of the run's requests) since it was last announced."""
    return last is None or abs(planned - last) > max(1, total // 100)


class Scheduler:
    """The scheduling decisions of one run, read from its store."""

    def __init__(
        self, store: Store, config: RunConfig, share: LaneShare, throttle: Throttle | None
    ) -> None:
        self.store = store
        self.config = config
        self.share = share
        self.throttle = throttle
        self.learned_capacity: dict[str, int] = {}
        self._balance_due = -float("inf")
        self._clock = time.monotonic
        self._announced: int | None = None
        self._total: int | None = None

    def mode(self) -> Mode:
        return choose_mode(self.config.settings.strategy, self.deadline_near())

    def turnaround(self) -> float:
        settings = self.config.settings
        finished = self.store.batches(self.config.run_id, [BatchState.FINISHED])
        return turnaround(finished, settings.turnaround_s, settings.time_scale)

    def deadline_near(self) -> bool:
        settings = self.config.settings
        if settings.deadline is None:
            return False
        return deadline_near(
            settings.deadline, self.turnaround(), settings.time_scale, datetime.now(UTC)
        )

    def capacity(self, model: str) -> int | None:
        return capacity(self.config.settings.queue_tokens(model), self.learned_capacity.get(model))

    def learn_capacity(self, batch: BatchRecord) -> int:
        """Learn the queue limit from `batch`, refused for it; returns the new limit."""
        others = sum(
            b.input_tokens
            for b in self.store.batches(self.config.run_id, LIVE)
            if b.model == batch.model and b.id != batch.id
        )
        learned = learn_capacity(batch.input_tokens, others, self.learned_capacity.get(batch.model))
        self.learned_capacity[batch.model] = learned
        return learned

    def poll_cap(self, batch: BatchRecord, turnaround_s: float) -> float:
        settings = self.config.settings
        return poll_cap(
            batch.submitted_at_utc,
            turnaround_s,
            time_scale=settings.time_scale,
            deadline=settings.deadline,
            poll_interval_s=settings.poll_interval_s,
            max_poll_interval_s=settings.max_poll_interval_s,
            now=datetime.now(UTC),
        )

    def rebalance(self) -> None:
        """How many of the pending requests go real time, chosen again from what is pending,
        the batches in the queue, the turnaround learned so far and what is left of the day's
        real-time requests, so that both lanes finish together (the cheapest such split)."""
        now = self._clock()
        if now < self._balance_due:
            return
        assert self.throttle is not None
        run_id, share = self.config.run_id, self.share
        limits = self.throttle.limits
        settings = self.config.settings
        # a flex answer is slow: the lane's concurrency bounds how fast its share goes
        latency = settings.flex_latency_s if settings.tier == FLEX else 0.0
        turnaround_s = self.turnaround()
        with share.lock:
            started = self._clock()
            count, tokens, most_out = self.store.pending_totals(run_id)
            took = self._clock() - started
            self._balance_due = now + max(settings.poll_interval_s, REBALANCE_SPACING * took)
            first = self.store.pending(run_id, 1)
            if not first:
                share.reserve = 0
                return
            model = first[0].model
            queued = self.store.batches(run_id, IN_QUEUE)
            split = hybrid_split(
                SplitInputs(
                    count,
                    tokens,
                    most_out // 2,
                    self.capacity(model),
                    turnaround_s,
                    limits.rpm,
                    limits.tpm,
                    limits.rpd,
                    live=in_queue(
                        queued,
                        model,
                        turnaround_s,
                        self.config.settings.time_scale,
                        datetime.now(UTC),
                    ),
                    day_left=self.throttle.day_left(),
                    latency_s=latency,
                    concurrency=settings.concurrency,
                )
            )
            share.reserve = split.realtime_requests
            planned = share.claimed + split.realtime_requests
        self._announce(planned, split, count)

    def _announce(self, planned: int, split: Estimate, pending: int) -> None:
        """An event when the split changes (`planned`: what the real-time lane has taken plus
        what it is to take)."""
        if self._total is None:
            self._total = sum(self.store.request_counts(self.config.run_id).values())
        if not announce_due(planned, self._announced, self._total):
            return
        self._announced = planned
        self.store.event(
            self.config.run_id,
            "hybrid",
            f"{split.realtime_requests} of the {pending} pending requests go real time; both "
            f"lanes done in about {duration(split.makespan_s)}",
        )
