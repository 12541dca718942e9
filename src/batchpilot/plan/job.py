"""Planning a job (or a batch JSONL file) from its specification."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG

from batchpilot.data import DatasetSpec, InputSpec, read_rows
from batchpilot.data.rows import Row
from batchpilot.plan.packing import BatchLimits
from batchpilot.plan.planner import Planner, PlanResult, PlanSettings, PlanSink
from batchpilot.plan.price_date import price_dates
from batchpilot.plan.sample import mean_output_tokens
from batchpilot.plan.sources import job_items, requests_file_items
from batchpilot.plan.strategies import StrategyInputs, estimate_strategies
from batchpilot.plan.waves import first_wave
from batchpilot.pricing import PriceTable, prices_for, tier_limits
from batchpilot.providers.registry import kind
from batchpilot.render import RequestRenderer
from batchpilot.spec import EstimateSpec, JobSpec, LimitsSpec, RealtimeSpec
from batchpilot.spec.model import parse_deadline
from batchpilot.spec.steps import step_job

__all__ = [
    "estimate_plan",
    "flex_offered",
    "input_spec",
    "main_model",
    "plan_job",
    "plan_requests_file",
    "queue_capacity",
    "settings_for",
]


DEFAULT_TURNAROUND_HOURS: float = EstimateSpec().batch_turnaround_hours


def input_spec(job: JobSpec) -> InputSpec | DatasetSpec:
    source = job.input
    if source.dataset is not None:
        return DatasetSpec(
            name=source.dataset,
            directory=_dataset_directory(job, source.dataset),
            split=source.split,
            config=source.config,
            id_field=source.id_field,
        )
    assert source.path is not None  # the job model asks for a path or a dataset
    return InputSpec(
        path=job.resolve(source.path),
        format=source.format,
        id_field=source.id_field,
        records=source.records,
        glob=source.glob,
        text_field=source.text_field,
        encoding=source.encoding,
    )


def main_model(requests: Mapping[str, int]) -> str:
    """The model most requests name (of equals, the first by name): a requests file's limits
    are that model's."""
    return min(requests, key=lambda name: (-requests[name], name))


def _dataset_directory(job: JobSpec, dataset: str) -> Path | None:
    """The directory `input.dataset` names, or None for a name in the Hugging Face cache:
    an existing directory, or a value that is plainly a path (./, ../, /, ~)."""
    path = job.resolve(dataset)
    if path.is_dir() or dataset.startswith((".", "/", "~", "\\")) or Path(dataset).is_absolute():
        return path
    return None


def queue_capacity(limits: LimitsSpec, model: str, *, tier: int, local: bool) -> int | None:
    """Input tokens the run may keep enqueued for `model`: the queue limit (from the job, else
    the tier table) times `queue_fraction`; None when unknown or for the local provider."""
    if local:
        return None
    total = limits.queue_tokens or tier_limits(model, tier).batch_queue_tokens
    return None if total is None else int(total * limits.queue_fraction)


def settings_for(
    limits: LimitsSpec,
    *,
    local: bool,
    tier: int,
    prices: PriceTable | None,
    max_output_tokens: int | None = None,
    expected_output_tokens: int | None = None,
    expected_output_ratio: float | None = None,
    budget_usd: float | None = None,
) -> PlanSettings:
    """Planner settings from a job's limits: tokens per batch from the queue limit."""

    @functools.cache
    def tokens_per_batch(model: str) -> int | None:
        if limits.tokens_per_batch is not None:
            return limits.tokens_per_batch
        return queue_capacity(limits, model, tier=tier, local=local)

    return PlanSettings(
        limits=BatchLimits(limits.requests_per_batch, limits.bytes_per_batch),
        tokens_per_batch=tokens_per_batch,
        max_output_tokens=max_output_tokens,
        expected_output_tokens=expected_output_tokens,
        expected_output_ratio=expected_output_ratio,
        context_window=limits.context_window,
        prices=prices,
        warn_unknown_queue=not local,
        model_max_output=limits.max_output_tokens,
        budget_usd=budget_usd,
    )


def plan_job(
    job: JobSpec,
    *,
    rows: Iterable[Row] | None = None,
    sink: PlanSink | None = None,
    progress: Callable[[int], None] | None = None,
) -> PlanResult:
    """Plan every request of a job. `rows` replaces the job's input (DataFrames, datasets).

    A multi-step job plans its first step (later steps need earlier answers to render); a job
    with a target plans its whole input, the most it could send.
    """
    if job.steps is not None:
        result = plan_job(step_job(job, job.steps[0]), rows=rows, sink=sink, progress=progress)
        if len(job.steps) > 1:
            result.assumptions.append(
                f"{len(job.steps)} steps: this is step 1 ({job.steps[0].name}); the later steps "
                "run over the rows that pass it, with prompts that use its answers"
            )
        return result
    renderer = RequestRenderer(job)
    prices = prices_for(job.provider.kind, job.prices or None)
    expected = job.estimate.output_tokens
    if job.estimate.sample is not None:
        expected = mean_output_tokens(job.resolve(job.estimate.sample))
    settings = settings_for(
        job.limits,
        local=job.provider.kind == "local",
        tier=job.provider.tier,
        prices=prices,
        max_output_tokens=job.max_output_tokens,
        expected_output_tokens=expected,
        expected_output_ratio=job.estimate.output_ratio,
        budget_usd=job.budget.max_usd,
    )
    size = None
    if rows is None:
        spec = input_spec(job)
        rows = read_rows(spec)
        size = _file_bytes(spec.path) if isinstance(spec, InputSpec) else None
    items = job_items(job, rows, renderer)
    result = Planner(settings).plan(items, sink, progress, ahead=True, input_bytes=size)
    result.strategies = strategies_for(job, result)
    if job.provider.kind != "local":
        result.prices = price_dates(prices, [job.model, *result.models])
    if job.target is not None:
        result.assumptions.append(
            f"target: rows are sent in waves until {job.target.valid} valid "
            f"{'items' if job.target.items else 'answers'} exist, starting with "
            f"{first_wave(job.target)} rows; this plan is the whole input, the most it can send"
        )
    return result


def strategies_for(
    job: JobSpec, result: PlanResult
) -> dict[str, dict[str, float | int | str | None]]:
    """Each strategy's makespan and cost for this plan under the job's limits."""
    return estimate_plan(
        result,
        job.model,
        job.limits,
        tier=job.provider.tier,
        local=job.provider.kind == "local",
        realtime=job.realtime,
        turnaround_hours=job.estimate.batch_turnaround_hours,
        budget=job.budget.max_usd,
        flex=flex_offered(job),
        flex_latency_s=job.estimate.flex_latency_seconds,
        deadline_s=_deadline_s(job.deadline),
    )


def estimate_plan(
    result: PlanResult,
    model: str,
    limits: LimitsSpec,
    *,
    tier: int,
    local: bool,
    realtime: RealtimeSpec,
    turnaround_hours: float,
    budget: float | None,
    flex: bool = False,
    flex_latency_s: float = EstimateSpec().flex_latency_seconds,
    deadline_s: float | None = None,
) -> dict[str, dict[str, float | int | str | None]]:
    """Each strategy's makespan and cost for a plan under `model`'s limits: those given, else
    the tier table's (none for the local provider). `flex`: the real-time requests may go at
    the flex tier, which bills at batch prices."""
    known = tier_limits(model, tier)
    # an explicit queue limit counts in the estimate even for the local provider
    explicit = limits.queue_tokens is not None
    queue = queue_capacity(limits, model, tier=tier, local=local and not explicit)
    inputs = StrategyInputs(
        requests=result.requests,
        input_tokens=result.input_tokens,
        output_tokens=result.expected_output_tokens,
        batch_cost=result.cost.get("batch"),
        realtime_cost=result.cost.get("realtime"),
        queue_tokens=queue,
        rpm=realtime.rpm or (None if local else known.rpm),
        tpm=realtime.tpm or (None if local else known.tpm),
        rpd=realtime.rpd or (None if local else known.rpd),
        turnaround_s=turnaround_hours * 3600,
        budget=budget,
        flex_cost=result.cost.get("batch") if flex else None,
        flex_latency_s=flex_latency_s,
        concurrency=realtime.concurrency,
        deadline_s=deadline_s,
    )
    return {name: value.as_json() for name, value in estimate_strategies(inputs).items()}


def flex_offered(job: JobSpec, prices: PriceTable | None = None) -> bool:
    """Whether the job's real-time requests can go at the flex tier: `realtime.flex` when it is
    given, else whether the provider has the tier and the price table says the model does."""
    if job.realtime.flex is not None:
        return job.realtime.flex
    if not kind(job.provider.kind).capabilities.flex:
        return False
    table = prices or prices_for(job.provider.kind, job.prices or None)
    return table.has(job.model) and table.price(job.model).flex


def _flex_priced(prices: PriceTable | None, model: str) -> bool:
    return prices is not None and prices.has(model) and prices.price(model).flex


def _deadline_s(deadline: str | None) -> float | None:
    """Seconds from now to the job's deadline (None: no deadline)."""
    if deadline is None:
        return None
    now = datetime.now(UTC)
    return max(0.0, (parse_deadline(deadline, now=now) - now).total_seconds())


def plan_requests_file(
    path: Path,
    *,
    limits: LimitsSpec | None = None,
    local: bool = False,
    tier: int = 1,
    sink: PlanSink | None = None,
    progress: Callable[[int], None] | None = None,
    model: str | None = None,
    budget_usd: float | None = None,
    realtime: RealtimeSpec | None = None,
    turnaround_hours: float = DEFAULT_TURNAROUND_HOURS,
) -> PlanResult:
    """Plan an existing OpenAI batch JSONL file as it is: custom ids and bodies kept (each
    line's max_tokens bounds its worst case). The strategies are estimated under the limits
    of the model most lines name: `limits` and `realtime` where they give them, else the
    tier table's at `tier`."""
    limits = limits or LimitsSpec()
    settings = settings_for(
        limits,
        local=local,
        tier=tier,
        prices=prices_for("local" if local else "openai"),
        budget_usd=budget_usd,
    )
    planner = Planner(settings)
    items = requests_file_items(path, model)
    result = planner.plan(items, sink, progress, ahead=True, input_bytes=_file_bytes(path))
    counts = {name: totals.requests for name, totals in result.models.items() if totals.requests}
    if counts:
        main = main_model(counts)
        result.strategies = estimate_plan(
            result,
            main,
            limits,
            tier=tier,
            local=local,
            realtime=realtime or RealtimeSpec(),
            turnaround_hours=turnaround_hours,
            budget=budget_usd,
            flex=_flex_priced(settings.prices, main) and not local,
        )
        if len(counts) > 1:
            result.assumptions.append(
                f"strategies: every request under the limits of {main}, the model most "
                f"lines name ({counts[main]:,} of {result.requests:,} requests)"
            )

    if not local and settings.prices is not None:
        result.prices = price_dates(settings.prices, result.models)
    return result


def _file_bytes(path: str | Path) -> int | None:
    """The size of the file at `path`, or None for a directory or what cannot be read."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return stat.st_size if S_ISREG(stat.st_mode) else None
