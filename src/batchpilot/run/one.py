"""One run of one job: planned into the store once, run to the end, its output exported.

`run_one` runs a job without steps, and each step of a pipeline; `run_job` (run/api.py)
chooses between it and a pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchpilot.data import read_rows
from batchpilot.data.rows import Row
from batchpilot.errors import UserInputError
from batchpilot.export import export_job
from batchpilot.lanes import RealtimeLane
from batchpilot.plan import plan_job
from batchpilot.plan.job import input_spec
from batchpilot.plan.waves import first_wave
from batchpilot.providers import Provider, provider_for
from batchpilot.providers.base import FLEX
from batchpilot.run.checks import answer_check
from batchpilot.run.config import RunConfig
from batchpilot.run.identity import identity_json, run_id_for, spec_json
from batchpilot.run.lease import RunLease
from batchpilot.run.limits import account_of
from batchpilot.run.runner import Runner
from batchpilot.run.settings import RunSettings, run_settings
from batchpilot.run.status import RunStatus
from batchpilot.run.store_sink import plan_run
from batchpilot.run.target import TargetCounter, plan_rest, run_to_target
from batchpilot.run.workspace import run_files, run_lock, store_at
from batchpilot.spec import JobSpec
from batchpilot.store import PendingRequest, RunKind, RunRecord, Store, utc_now

__all__ = ["RunResult", "open_runner", "owned_provider", "run_one"]


@dataclass
class RunResult:
    """What a run came to: its id, its progress, and the output file it wrote (if any)."""

    run_id: str
    status: RunStatus
    output: Path | None = None


@contextmanager
def owned_provider(given: Provider | None, job: JobSpec, state_dir: Path) -> Iterator[Provider]:
    """`given`, else the job's own provider, closed (with its local server) when done."""
    if given is not None:
        yield given
        return
    provider = provider_for(job.provider, state_dir=Path(state_dir))
    try:
        yield provider
    finally:
        provider.close()


@contextmanager
def open_runner(
    store: Store,
    run_id: str,
    state_dir: Path,
    provider: Provider,
    settings: RunSettings,
    on_progress: Callable[[RunStatus], None] | None,
    use_cache: bool,
    check: Callable[[PendingRequest, dict[str, Any]], str | None] | None = None,
    target: TargetCounter | None = None,
    *,
    account: str | None = None,
    fence: Callable[[], None] | None = None,
    worker: str | None = None,
) -> Iterator[Runner]:
    """A runner with its lanes, handling Ctrl-C while it is open; the caller holds the lock (or
    the lease, whose `fence` the runner checks)."""
    config = RunConfig(
        run_id,
        settings,
        run_files(state_dir, run_id),
        use_cache=use_cache,
        check=check,
        target=target,
        on_progress=on_progress,
        account=account,
        fence=fence,
        worker=worker,
    )
    problem = provider.capabilities.check(settings.strategy, provider.name)
    if problem is None and settings.tier == FLEX and not provider.capabilities.flex:
        problem = f"provider {provider.name} has no flex tier; remove realtime.flex"
    if problem is not None:
        raise UserInputError(problem)
    lane = None
    if settings.strategy != "batch":
        lane = RealtimeLane(
            provider.realtime(),
            store,
            run_id,
            limits=settings.realtime,
            concurrency=settings.concurrency,
            timeout_s=settings.realtime_timeout_s,
            prices=settings.prices,
            retry=settings.retry,
            budget_usd=settings.budget_usd,
            check=check,
            tier=settings.tier,
            deadline=settings.deadline,
            flex_fallback_s=settings.flex_fallback_s,
            shared_rate=None if account is None else partial(store.take_rate, account),
        )
        lane.recall_day()
    runner = Runner(store, provider, config, lane)
    runner.interrupt.install()
    try:
        yield runner
    finally:
        runner.interrupt.restore()


def _row_source(job: JobSpec, rows: Iterable[Row] | None) -> Callable[[], Iterable[Row]]:
    """The job's rows, as often as they are needed (target mode reads them once per wave)."""
    if rows is None:
        return lambda: read_rows(input_spec(job))
    if job.target is None:
        return lambda: rows
    kept = list(rows)
    return lambda: kept


def run_one(
    job: JobSpec,
    *,
    state_dir: Path,
    rows: Iterable[Row] | None = None,
    provider: Provider | None = None,
    on_progress: Callable[[RunStatus], None] | None = None,
    detach: bool = False,
    cancel_on_exit: bool = False,
    poll_interval: float | None = None,
    fresh: bool = False,
    response_model: type[BaseModel] | None = None,
    run_id: str | None = None,
    recorded: JobSpec | None = None,
    lease: RunLease | None = None,
    export: bool = True,
) -> RunResult:
    """Plan a job without steps into the store (once), run it to the end, export its output.

    A pipeline's step gives its own `run_id` and the job its run `recorded` (the whole
    pipeline, so that `resume` and `export` of any step's run see the pipeline). The run's
    lock, store and provider (unless given) are released however the run ends. A worker gives
    the `lease` it holds on the run (on a SQLite store it takes the run's lock too), and may
    leave the export to `batchpilot export` (`export=False`).
    """
    assert job.steps is None, "a pipeline runs each step through run_one"
    stored = recorded or job
    spec = spec_json(stored)
    run_id = run_id or run_id_for(job.name, identity_json(job))
    kind = RunKind.JOB if stored.steps is None else RunKind.PIPELINE
    record = RunRecord(
        run_id,
        job.name,
        spec,
        job.provider.kind,
        job.endpoint,
        "planned",
        job.budget.max_usd,
        utc_now(),
        kind=kind,
    )
    source = _row_source(job, rows)
    # The lock comes first: two processes must not both plan a new run, and a refused one must
    # not have started anything (a local model) by then.
    held = run_lock(state_dir, run_id)
    lock = nullcontext(lease) if lease is not None and isinstance(held, RunLease) else held
    with lock as taken, store_at(state_dir) as store:
        guard = lease if lease is not None else taken
        fence = guard.fence if isinstance(guard, RunLease) else None
        worker = guard.worker if isinstance(guard, RunLease) else None
        account = account_of(job.provider)
        _plan(store, record, job, source)
        settings = run_settings(
            job,
            poll_interval=poll_interval,
            detach=detach,
            cancel_on_exit=cancel_on_exit,
            run=store.run(run_id),
        )
        check = answer_check(job, store, run_id, response_model)
        with owned_provider(provider, job, state_dir) as chosen:

            def drive(target: TargetCounter | None = None) -> RunStatus:
                with open_runner(
                    store,
                    run_id,
                    state_dir,
                    chosen,
                    settings,
                    on_progress,
                    not fresh,
                    check,
                    target,
                    account=account,
                    fence=fence,
                    worker=worker,
                ) as runner:
                    return runner.run()

            if job.target is None:
                status = drive()
            else:
                status = run_to_target(store, record, job, source, drive)
        output = None
        if export and status.finished and job.output is not None:
            output = job.resolve(job.output.path)
            export_job(store, run_id, job, output)
    return RunResult(run_id, status, output)


def _plan(
    store: Store, record: RunRecord, job: JobSpec, source: Callable[[], Iterable[Row]]
) -> None:
    """Plan a new run (its first wave in target mode); a run that exists keeps its requests
    and takes the job's latest settings."""
    existing = store.run(record.id)
    if existing is None:
        first = source() if job.target is None else islice(source(), first_wave(job.target))
        plan_run(store, record, lambda sink: plan_job(job, rows=first, sink=sink), "plan")
        return
    had_target = json.loads(existing.spec_json).get("target") is not None
    store.set_run_spec(record.id, record.spec_json, job.budget.max_usd)
    if had_target and job.target is None:
        plan_rest(store, record, job, source)
