"""Running a standard OpenAI batch JSONL file as it is, with the options a job's run takes.

A requests file has no job: its strategy, deadline, budget and limits come from the call (the
CLI's flags), each time it is run. What names its run is the file's content, the provider and
its URL, so a second call with another strategy, deadline or budget continues the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import get_args

from batchpilot.errors import UserInputError
from batchpilot.export import export_run
from batchpilot.lanes.ratelimit import RateLimits
from batchpilot.plan import plan_requests_file
from batchpilot.plan.job import main_model
from batchpilot.pricing import prices_for, tier_limits
from batchpilot.providers import Provider
from batchpilot.providers.base import FLEX, STANDARD
from batchpilot.run.display import shown_progress
from batchpilot.run.identity import requests_identity
from batchpilot.run.lease import RunLease
from batchpilot.run.limits import account_of_parts
from batchpilot.run.one import RunResult, open_runner
from batchpilot.run.settings import RunSettings, limit_settings
from batchpilot.run.status import RunStatus
from batchpilot.run.store_sink import plan_run
from batchpilot.run.workspace import DEFAULT_STATE_DIR, run_lock, store_at
from batchpilot.spec import JobSpec, LimitsSpec, RealtimeSpec
from batchpilot.spec.model import parse_deadline
from batchpilot.store import RunKind, RunRecord, Store, utc_now

__all__ = ["STRATEGIES", "run_requests_file"]

STRATEGIES: tuple[str, ...] = get_args(JobSpec.model_fields["strategy"].annotation)
"""The strategies a job may name, and so a requests file's run."""


def run_requests_file(
    path: Path,
    *,
    provider: Provider | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    kind: str = "openai",
    budget: float | None = None,
    on_progress: Callable[[RunStatus], None] | None = None,
    detach: bool = False,
    poll_interval: float | None = None,
    model: str | None = None,
    base_url: str | None = None,
    strategy: str = "batch",
    deadline: str | None = None,
    cancel_on_exit: bool = False,
    fresh: bool = False,
    output: Path | None = None,
    tier: int = 1,
    limits: LimitsSpec | None = None,
    realtime: RealtimeSpec | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Run a standard OpenAI batch JSONL file as it is; results keep its custom ids.

    The provider is `provider`, else the OpenAI-compatible one of `kind` (openai, azure or
    compatible) at `base_url`, with its key from the environment. `strategy`, `deadline` (an
    ISO time, or a duration counted from the run's start), `cancel_on_exit`, `fresh` (no
    answers from the cache) and `budget` work as they do for a job; `limits` and `realtime`
    as a job's sections of those names, their unset limits from the tier table (`tier`) of
    the file's main model. A finished run is exported to `output` (JSONL, CSV or Parquet by
    its suffix) when given. `progress` shows the run's progress on stderr (None: only when
    stderr is a terminal), as for `run_job`.
    """
    if provider is None and kind == "local":
        raise UserInputError("a requests file runs on openai, azure or compatible providers")
    if strategy not in STRATEGIES:
        raise UserInputError(
            f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}; choose one of those"
        )
    if deadline is not None:
        _deadline(deadline, None)  # refused before anything is planned
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    limits = limits or LimitsSpec()
    local = kind == "local"
    run_id, spec = requests_identity(path, kind=kind, model=model, base_url=base_url)
    with ExitStack() as held:
        taken = held.enter_context(run_lock(state_dir, run_id))
        report = held.enter_context(shown_progress(progress, on_progress))
        store = held.enter_context(store_at(state_dir))
        if provider is None:
            from batchpilot.providers.openai import openai_provider

            provider = openai_provider(base_url=base_url, kind=kind)  # type: ignore[arg-type]
            held.callback(provider.close)
        problem = provider.capabilities.check(strategy, provider.name)
        if problem is not None:
            raise UserInputError(problem)
        record = store.run(run_id)
        if record is None:
            record = RunRecord(
                run_id,
                path.stem,
                spec,
                kind,
                "mixed",
                "planned",
                budget,
                utc_now(),
                kind=RunKind.REQUESTS,
            )
            plan_run(
                store,
                record,
                lambda sink: plan_requests_file(
                    path,
                    limits=limits,
                    local=local,
                    tier=tier,
                    sink=sink,
                    model=model,
                    budget_usd=budget,
                ),
                "requests file",
            )
        else:
            store.set_budget(run_id, budget)
        settings = limit_settings(
            limits,
            local=local,
            tier=tier,
            budget=budget,
            prices=prices_for(kind),
            poll_interval=poll_interval,
            detach=detach,
            cancel_on_exit=cancel_on_exit,
        )
        settings = _lanes(settings, store, record, strategy, deadline, tier, realtime, local)
        if strategy == "hybrid" and not provider.capabilities.flex:
            settings = replace(settings, tier=STANDARD)
        with open_runner(
            store,
            run_id,
            state_dir,
            provider,
            settings,
            report,
            not fresh,
            account=account_of_parts(kind, base_url, None),
            fence=taken.fence if isinstance(taken, RunLease) else None,
        ) as runner:
            status = runner.run()
        written = None
        if status.finished and output is not None:
            export_run(store, run_id, output)
            written = output
    return RunResult(run_id, status, written)


def _deadline(value: str, started: datetime | None) -> datetime:
    try:
        return parse_deadline(value, now=started)
    except ValueError as exc:
        raise UserInputError(f"--deadline: {exc}") from None


def _lanes(
    settings: RunSettings,
    store: Store,
    record: RunRecord,
    strategy: str,
    deadline: str | None,
    tier: int,
    realtime: RealtimeSpec | None,
    local: bool,
) -> RunSettings:
    """The strategy, the deadline counted from the run's start, the real-time limits (those
    given, else the tier table's for the model most of the file's requests name) and the
    real-time lane's tier: flex for the flex strategy, and for the hybrid where that model has
    the flex tier."""
    given = realtime or RealtimeSpec()
    started = datetime.fromisoformat(record.created_at_utc.replace("Z", "+00:00"))
    totals = {name: count for name, (count, _) in store.planned_totals(record.id).items()}
    main = main_model(totals) if totals else None
    known = tier_limits(main, tier) if main and not local else None
    prices = settings.prices
    flex = strategy == "flex" or (
        strategy == "hybrid"
        and main is not None
        and prices is not None
        and prices.has(main)
        and prices.price(main).flex
    )
    return replace(
        settings,
        strategy=strategy,
        deadline=None if deadline is None else _deadline(deadline, started),
        realtime=RateLimits(
            rpm=given.rpm or (known.rpm if known else None),
            tpm=given.tpm or (known.tpm if known else None),
            rpd=given.rpd or (known.rpd if known else None),
        ),
        concurrency=given.concurrency,
        realtime_timeout_s=given.timeout,
        tier=FLEX if flex and not local else STANDARD,
    )
