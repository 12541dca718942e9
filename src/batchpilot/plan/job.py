"""Planning a job (or a batch JSONL file) from its specification."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path

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
from batchpilot.render import RequestRenderer
from batchpilot.spec import JobSpec, LimitsSpec
from batchpilot.spec.steps import step_job

__all__ = ["input_spec", "plan_job", "plan_requests_file", "queue_capacity", "settings_for"]


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
    source = rows if rows is not None else read_rows(input_spec(job))
    result = Planner(settings).plan(job_items(job, source, renderer), sink, progress)
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


def strategies_for(job: JobSpec, result: PlanResult) -> dict[str, dict[str, float | int | None]]:
    """Each strategy's makespan and cost for this plan under the job's limits."""
    tier = tier_limits(job.model, job.provider.tier)
    local = job.provider.kind == "local"
    # an explicit queue limit counts in the estimate even for the local provider
    explicit = job.limits.queue_tokens is not None
    queue = queue_capacity(
        job.limits, job.model, tier=job.provider.tier, local=local and not explicit
    )
    realtime = job.realtime
    inputs = StrategyInputs(
        requests=result.requests,
        input_tokens=result.input_tokens,
        output_tokens=result.expected_output_tokens,
        batch_cost=result.cost.get("batch"),
        realtime_cost=result.cost.get("realtime"),
        queue_tokens=queue,
        rpm=realtime.rpm or (None if local else tier.rpm),
        tpm=realtime.tpm or (None if local else tier.tpm),
        rpd=realtime.rpd or (None if local else tier.rpd),
        turnaround_s=job.estimate.batch_turnaround_hours * 3600,
        budget=job.budget.max_usd,
    )
    return {name: value.as_json() for name, value in estimate_strategies(inputs).items()}


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
) -> PlanResult:
    """Plan an existing OpenAI batch JSONL file as it is: custom ids and bodies kept (each
    line's max_tokens bounds its worst case)."""
    settings = settings_for(
        limits or LimitsSpec(),
        local=local,
        tier=tier,
        prices=prices_for("local" if local else "openai"),
        budget_usd=budget_usd,
    )
    planner = Planner(settings)
    result = planner.plan(requests_file_items(path, model), sink, progress)
    if not local and settings.prices is not None:
        result.prices = price_dates(settings.prices, result.models)
    return result
