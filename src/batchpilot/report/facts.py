"""What a report shows about one run, read from the store in one streamed pass.

Nothing here draws: `figures` turns these facts into plots. Memory stays bounded whatever the
run's size: attempts are streamed once into a fixed number of time bins and counters; only the
batches and a few examples of each rejection are kept whole.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from batchpilot.run.identity import job_of
from batchpilot.run.status import RunStatus, run_status
from batchpilot.spec import JobSpec
from batchpilot.store import BatchRecord, RunRecord, Store
from batchpilot.store.records import AttemptGroup

__all__ = ["BINS", "REJECTIONS", "RunFacts", "Series", "gather", "parse_utc", "reason_kind"]

BINS = 120
"""Time bins of the series over a run's life."""
REJECTIONS = ("refused", "truncated", "invalid_json", "schema", "rejected")
"""The kinds of reason an answer's own checks give (the answer came back, but is not usable)."""
EXAMPLES = 5
"""Examples kept of each kind of rejection."""


def parse_utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def reason_kind(error: str) -> str:
    """A failure reason's kind: the text before its first colon."""
    return error.split(":", 1)[0].strip()


@dataclass
class Series:
    """Counts and sums per time bin; `width_s` seconds each, from the run's start."""

    width_s: float
    done: dict[str, list[int]] = field(default_factory=dict)
    """Answers per lane (and `failed` for requests that failed for good) in each bin."""
    cost_usd: list[float] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)

    @property
    def bins(self) -> int:
        return len(self.cost_usd)

    def lane(self, name: str) -> list[int]:
        return self.done.setdefault(name, [0] * self.bins)


@dataclass
class Estimate:
    """The plan's estimate for the requests the run holds, under the job's strategy."""

    strategy: str
    cost_usd: float | None
    makespan_s: float


@dataclass
class RunFacts:
    record: RunRecord
    job: JobSpec | None
    status: RunStatus
    started: datetime
    ended: datetime
    """When the run finished, or now for a run still going."""
    series: Series
    batches: list[BatchRecord]
    lanes: dict[str, tuple[int, int, int, float]] = field(default_factory=dict)
    """Per lane: answers, input tokens, output tokens, USD."""
    by_attempt: dict[int, Counter[str]] = field(default_factory=dict)
    """Per attempt number: how many tries ended in each outcome."""
    retried: Counter[str] = field(default_factory=Counter)
    """Failed tries retried later, by reason kind."""
    failed: Counter[str] = field(default_factory=Counter)
    """Tries that failed their request for good, by reason kind."""
    examples: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)
    """Per rejection kind: (request id, attempt, reason) of its first few."""
    deadline: datetime | None = None
    estimate: Estimate | None = None
    target: int | None = None
    waves: list[tuple[float, str]] = field(default_factory=list)
    """Target runs: (seconds from the start, message) of each wave planned."""

    @property
    def finished(self) -> bool:
        return self.record.finished_at_utc is not None and self.status.finished

    @property
    def elapsed_s(self) -> float:
        return max(0.0, (self.ended - self.started).total_seconds())

    def seconds(self, stamp: str | None) -> float | None:
        """Seconds from the run's start to `stamp`."""
        return None if stamp is None else (parse_utc(stamp) - self.started).total_seconds()


def gather(
    store: Store,
    record: RunRecord,
    *,
    job: JobSpec | None = None,
    now: datetime | None = None,
) -> RunFacts:
    """Every fact a report shows about `record`, read through the store's interface; `job` is
    the run's own job when it differs from the one it records (a step of a pipeline)."""
    job = job or job_of(record)
    status = run_status(store, record.id)
    started = parse_utc(record.created_at_utc)
    # A run that stopped (finished, cancelled) ends then; one still going ends now.
    stopped = record.finished_at_utc
    ended = (now or datetime.now(UTC)) if stopped is None else parse_utc(stopped)
    batches = store.batches(record.id)
    for batch in batches:
        if batch.finished_at_utc is not None and stopped is not None:
            ended = max(ended, parse_utc(batch.finished_at_utc))
    span = max(1.0, (ended - started).total_seconds())
    series = Series(width_s=span / BINS)
    series.cost_usd = [0.0] * BINS
    series.input_tokens = [0] * BINS
    series.output_tokens = [0] * BINS
    facts = RunFacts(record, job, status, started, ended, series, batches)
    _read_attempts(store, facts)
    if job is not None:
        _job_facts(store, facts, job)
    return facts


def _read_attempts(store: Store, facts: RunFacts) -> None:
    lanes: dict[str, list[float]] = {}
    # answers that ended together on one lane and try (a batch's, which the store may add up
    # itself) are added up as they come and counted as one run
    run: AttemptGroup | None = None
    count, input_tokens, output_tokens, cost = 0, 0, 0, 0.0
    for group in store.attempt_groups(facts.record.id):
        if (
            run is not None
            and group.at_utc == run.at_utc
            and group.outcome == "succeeded"
            and group.lane == run.lane
            and group.attempt == run.attempt
        ):
            count += group.tries
            input_tokens += group.input_tokens
            output_tokens += group.output_tokens
            cost += group.cost_usd
            continue
        if run is not None:
            _count_answers(facts, lanes, run, count, input_tokens, output_tokens, cost)
            run = None
        if group.outcome == "succeeded":
            run, count = group, group.tries
            input_tokens, output_tokens = group.input_tokens, group.output_tokens
            cost = group.cost_usd
        else:  # a try that failed is a group of its own
            _count_failure(facts, lanes, group)
    if run is not None:
        _count_answers(facts, lanes, run, count, input_tokens, output_tokens, cost)
    facts.lanes = {
        lane: (int(t[0]), int(t[1]), int(t[2]), float(t[3])) for lane, t in lanes.items()
    }


def _slot(facts: RunFacts, attempt: AttemptGroup) -> int:
    series = facts.series
    seconds = (parse_utc(attempt.at_utc) - facts.started).total_seconds()
    return min(series.bins - 1, max(0, int(seconds / series.width_s)))


def _add_use(
    facts: RunFacts,
    lanes: dict[str, list[float]],
    attempt: AttemptGroup,
    slot: int,
    used: tuple[int, int, float],
) -> list[float]:
    """Tokens and cost of tries on `attempt`'s lane in time slot `slot`; the lane's totals."""
    series = facts.series
    totals = lanes.setdefault(attempt.lane, [0, 0, 0, 0.0])
    totals[1] += used[0]
    totals[2] += used[1]
    totals[3] += used[2]
    series.input_tokens[slot] += used[0]
    series.output_tokens[slot] += used[1]
    series.cost_usd[slot] += used[2]
    return totals


def _count_answers(
    facts: RunFacts,
    lanes: dict[str, list[float]],
    attempt: AttemptGroup,
    count: int,
    input_tokens: int,
    output_tokens: int,
    cost: float,
) -> None:
    """`count` answers that ended like `attempt` (at its time, on its lane and try)."""
    slot = _slot(facts, attempt)
    totals = _add_use(facts, lanes, attempt, slot, (input_tokens, output_tokens, cost))
    totals[0] += count
    facts.series.lane(attempt.lane)[slot] += count
    if attempt.attempt > 0:
        facts.by_attempt.setdefault(attempt.attempt, Counter())["succeeded"] += count


def _count_failure(facts: RunFacts, lanes: dict[str, list[float]], attempt: AttemptGroup) -> None:
    slot = _slot(facts, attempt)
    used = (attempt.input_tokens, attempt.output_tokens, attempt.cost_usd)
    _add_use(facts, lanes, attempt, slot, used)
    if attempt.attempt > 0:
        facts.by_attempt.setdefault(attempt.attempt, Counter())[attempt.outcome] += 1
    kind = reason_kind(attempt.error or "unknown")
    if attempt.outcome == "failed":
        facts.failed[kind] += 1
        facts.series.lane("failed")[slot] += 1
    else:
        facts.retried[kind] += 1
    if kind in REJECTIONS:
        kept = facts.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES:
            kept.append((attempt.request_id, attempt.attempt, attempt.error or ""))


def _job_facts(store: Store, facts: RunFacts, job: JobSpec) -> None:
    from batchpilot.spec.model import parse_deadline

    if job.deadline is not None:
        facts.deadline = parse_deadline(job.deadline, now=facts.started)
    if job.target is not None:
        facts.target = job.target.valid
        for event in store.events(facts.record.id):
            if event["kind"] == "target" and "more rows planned" in event["message"]:
                at = facts.seconds(str(event["at_utc"]))
                facts.waves.append((at or 0.0, str(event["message"])))
    facts.estimate = estimate(store, facts.record.id, job)


def estimate(store: Store, run_id: str, job: JobSpec) -> Estimate | None:
    """The plan's estimate of cost and makespan for the requests the run holds, made as
    `batchpilot plan` makes it: expected output tokens per request, priced, under the job's
    limits; None when the model has no price."""
    from batchpilot.plan.job import strategies_for
    from batchpilot.plan.planner import DEFAULT_EXPECTED_OUTPUT, PlanResult
    from batchpilot.pricing import PriceTable

    totals = store.planned_totals(run_id)
    if not totals:
        return None
    prices = PriceTable.load(overrides=job.prices or None)
    result = PlanResult()
    cost: dict[str, float | None] = {"batch": 0.0, "realtime": 0.0}
    for model, (requests, input_tokens) in totals.items():
        if job.estimate.output_tokens is not None:
            expected = job.estimate.output_tokens * requests
        elif job.estimate.output_ratio is not None:
            expected = round(job.estimate.output_ratio * input_tokens)
        else:
            cap = job.max_output_tokens
            each = DEFAULT_EXPECTED_OUTPUT if cap is None else min(cap, DEFAULT_EXPECTED_OUTPUT)
            expected = each * requests
        result.requests += requests
        result.input_tokens += input_tokens
        result.expected_output_tokens += expected
        for key, batch in (("batch", True), ("realtime", False)):
            held = cost[key]
            cost[key] = (
                None
                if held is None or not prices.has(model)
                else held
                + prices.cost(model, input_tokens=input_tokens, output_tokens=expected, batch=batch)
            )
    result.cost = cost
    chosen = strategies_for(job, result).get(job.strategy)
    if chosen is None:
        return None
    usd = chosen.get("cost_usd")
    return Estimate(
        job.strategy, None if usd is None else float(usd), float(chosen["makespan_s"] or 0)
    )
