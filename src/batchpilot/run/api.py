"""Running jobs from Python: the same functions the CLI calls.

result = run_job(load_job("job.yaml"))            # plan, submit, wait, export
print(result.status.done, result.status.spent_usd)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchpilot.data import read_rows
from batchpilot.data.rows import Row
from batchpilot.errors import UserInputError
from batchpilot.lanes import RateLimits, RealtimeLane
from batchpilot.plan import PlanResult, plan_job, plan_requests_file
from batchpilot.plan.job import input_spec, queue_capacity
from batchpilot.plan.waves import first_wave, next_wave
from batchpilot.pricing import PriceTable, tier_limits
from batchpilot.providers import Provider, provider_for
from batchpilot.response_schema import load_response_model, load_response_schema
from batchpilot.run.config import RunConfig
from batchpilot.run.ingest import RetryPolicy
from batchpilot.run.output import export_job, export_rows, export_run, write_job_output
from batchpilot.run.runner import Runner
from batchpilot.run.settings import RunSettings
from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.store_sink import StoreSink, plan_errors, plan_into_store
from batchpilot.run.target import TargetCounter
from batchpilot.spec import JobSpec, LimitsSpec, job_from_dict
from batchpilot.spec.model import parse_deadline
from batchpilot.store import PendingRequest, RunLock, RunRecord, Store, opening, utc_now
from batchpilot.validate import AnswerCheck, load_validator

__all__ = [
    "DEFAULT_STATE_DIR",
    "RunResult",
    "export_job",
    "export_rows",
    "export_run",
    "find_run",
    "job_of",
    "open_store",
    "run_id_for",
    "run_job",
    "run_requests_file",
    "status_of",
    "write_job_output",
]

DEFAULT_STATE_DIR = Path(".batchpilot")
_USERINFO = re.compile(r"(?<=://)[^/@]+@")


@dataclass
class RunResult:
    run_id: str
    status: RunStatus
    output: Path | None = None


def open_store(state_dir: Path) -> Store:
    """The state directory's store (or the PostgreSQL store `BATCHPILOT_STORE` names)."""
    return opening.open_store(Path(state_dir))


def spec_json(job: JobSpec) -> str:
    """The job as stored: everything that shapes its requests and where its files are; never
    a credential (keys live only in the environment; user:password@ is cut from URLs)."""
    data = json.loads(job.model_dump_json(by_alias=True))
    data["base_dir"] = str(job.base_dir.resolve())
    return _USERINFO.sub("", json.dumps(data, sort_keys=True))


def job_of(run: RunRecord) -> JobSpec | None:
    """The job a run was started from (None for a run of a requests file or of a task)."""
    data = json.loads(run.spec_json)
    if "requests" in data or "task" in data:
        return None
    base = Path(data.pop("base_dir", "."))
    return job_from_dict(data, base_dir=base, environ={})


# What shapes the requests and where they go; changing anything else (strategy, deadline,
# budget, limits, output) continues the same run instead of starting another.
IDENTITY = ("name", "provider", "model", "endpoint", "input", "prompt", "params", "response")


def identity_json(job: JobSpec) -> str:
    data = json.loads(spec_json(job))
    return json.dumps({key: data.get(key) for key in (*IDENTITY, "base_dir")}, sort_keys=True)


def run_id_for(name: str, spec: str) -> str:
    return f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def _settings(
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
    def queue(model: str) -> int | None:
        return queue_capacity(limits, model, tier=tier, local=local)

    def per_batch(model: str) -> int | None:
        return limits.tokens_per_batch if limits.tokens_per_batch is not None else queue(model)

    return RunSettings(
        requests_per_batch=limits.requests_per_batch,
        bytes_per_batch=limits.bytes_per_batch,
        tokens_per_batch=per_batch,
        queue_tokens=queue,
        budget_usd=budget,
        prices=prices,
        retry=RetryPolicy(limits.max_attempts),
        poll_interval_s=poll_interval if poll_interval is not None else (0.2 if local else 5.0),
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
) -> RunSettings:
    """Everything a runner needs to know about a job beyond its requests."""
    settings = _settings(
        job.limits,
        local=job.provider.kind == "local",
        tier=job.provider.tier,
        budget=job.budget.max_usd,
        prices=PriceTable.load(overrides=job.prices or None),
        poll_interval=poll_interval,
        detach=detach,
        cancel_on_exit=cancel_on_exit,
    )
    return _strategy_settings(job, settings, run)


@dataclass(frozen=True)
class JobCheck:
    """The job's checks on every answer, reading input rows (for validators) from `store`."""

    check: AnswerCheck
    needs_rows: bool
    store: Store
    run_id: str

    def __call__(self, request: PendingRequest, body: dict[str, Any]) -> str | None:
        data = self.store.row_data(self.run_id, request.first_row) if self.needs_rows else None
        return self.check(body, data)


def answer_check(
    job: JobSpec, store: Store, run_id: str, model: type[BaseModel] | None = None
) -> JobCheck:
    """The job's checks on every answer: refusals always; the response schema (with
    truncation and invalid JSON, then the pydantic model's own validators when the schema
    comes from a model: the job's `module:Class`, or `model`) and the validators when the
    job has them."""
    schema, found = None, None
    if job.response is not None:
        schema = load_response_schema(job.response, job.base_dir)[1]
        found = model or load_response_model(job.response, job.base_dir)
    validators = [(name, load_validator(name, job.base_dir)) for name in job.validators]
    return JobCheck(AnswerCheck(schema, validators, found), bool(validators), store, run_id)


def _strategy_settings(job: JobSpec, settings: RunSettings, run: RunRecord | None) -> RunSettings:
    """`settings` with the job's strategy, deadline (durations count from the run's start) and
    real-time limits."""
    deadline = None
    if job.deadline is not None:
        started = datetime.fromisoformat(run.created_at_utc.replace("Z", "+00:00")) if run else None
        deadline = parse_deadline(job.deadline, now=started)
    local = job.provider.kind == "local"
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
    )


def _plan_into_store(
    store: Store,
    record: RunRecord,
    plan: Callable[[StoreSink], PlanResult],
    what: str,
    *,
    create: bool = True,
) -> PlanResult:
    """Create the run (unless it exists: `create` false) and plan rows and requests into it in
    one transaction: a plan that fails or finds errors leaves the store as it was."""
    first = (lambda: store.create_run(record)) if create else None
    result = plan_into_store(store, record.id, plan, first=first)
    if not result.ok:
        raise UserInputError(f"the {what} has errors; nothing was sent:\n  {plan_errors(result)}")
    return result


def find_run(store: Store, run_id: str | None) -> RunRecord:
    """A run by id, or the latest one; a clear error when there is none."""
    if run_id is not None:
        run = store.run(run_id)
        if run is None:
            raise UserInputError(f"no run '{run_id}' in {store.where}; `batchpilot ls` lists them")
        return run
    runs = store.runs()
    if not runs:
        raise UserInputError(f"no runs in {store.where} yet; start one with `batchpilot run`")
    return runs[0]


def run_lock(state_dir: Path, run_id: str) -> RunLock:
    """The lock that keeps a run to one process."""
    return RunLock(Path(state_dir) / "locks" / f"{run_id}.lock")


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
) -> Iterator[Runner]:
    """A runner with its lanes, handling Ctrl-C while it is open; the caller holds the lock."""
    config = RunConfig(
        run_id,
        settings,
        Path(state_dir) / "runs" / run_id / "files",
        use_cache=use_cache,
        check=check,
        target=target,
        on_progress=on_progress,
    )
    problem = provider.capabilities.check(settings.strategy, provider.name)
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


def run_job(
    job: JobSpec,
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    rows: Iterable[Row] | None = None,
    provider: Provider | None = None,
    on_progress: Callable[[RunStatus], None] | None = None,
    detach: bool = False,
    cancel_on_exit: bool = False,
    poll_interval: float | None = None,
    fresh: bool = False,
    run_id: str | None = None,
    recorded: JobSpec | None = None,
    response_model: type[BaseModel] | None = None,
) -> RunResult:
    """Plan the job into the store (once), then run it to the end and export its output.

    Running the same job again continues its run: the run id is a hash of the job. A job
    with `steps` runs them in order (see `run_pipeline`); a job with a `target` plans its rows
    in waves and stops once the target is met. `run_id` and `recorded` (the job the run
    records as its own: a pipeline records itself in each step's run, so that `resume` and
    `export` see the whole pipeline) are for pipelines. `response_model` is the pydantic
    model the job's schema file was written from, whose own validators answers must pass.
    """
    if job.steps is not None:
        from batchpilot.run.pipeline import run_pipeline

        return run_pipeline(
            job,
            state_dir=state_dir,
            rows=rows,
            provider=provider,
            on_progress=on_progress,
            detach=detach,
            cancel_on_exit=cancel_on_exit,
            poll_interval=poll_interval,
            fresh=fresh,
        )
    spec = spec_json(recorded or job)
    run_id = run_id or run_id_for(job.name, identity_json(job))
    # The lock comes first: two processes must not both plan a new run, and a refused one must
    # not have started anything (a local model) by then.
    with run_lock(state_dir, run_id):
        store = open_store(state_dir)
        try:
            return _run_locked(
                job,
                store,
                run_id,
                spec,
                state_dir=state_dir,
                rows=rows,
                provider=provider,
                on_progress=on_progress,
                detach=detach,
                cancel_on_exit=cancel_on_exit,
                poll_interval=poll_interval,
                fresh=fresh,
                response_model=response_model,
            )
        finally:
            store.close()


def _run_locked(
    job: JobSpec,
    store: Store,
    run_id: str,
    spec: str,
    *,
    state_dir: Path,
    rows: Iterable[Row] | None,
    provider: Provider | None,
    on_progress: Callable[[RunStatus], None] | None,
    detach: bool,
    cancel_on_exit: bool,
    poll_interval: float | None,
    fresh: bool,
    response_model: type[BaseModel] | None,
) -> RunResult:
    """`run_job` once it holds the run's lock."""
    prices = PriceTable.load(overrides=job.prices or None)
    source = _row_source(job, rows)
    record = RunRecord(
        run_id,
        job.name,
        spec,
        job.provider.kind,
        job.endpoint,
        "planned",
        job.budget.max_usd,
        utc_now(),
    )
    existing = store.run(run_id)
    if existing is not None:
        had_target = json.loads(existing.spec_json).get("target") is not None
        store.set_run_spec(run_id, spec, job.budget.max_usd)
        if had_target and job.target is None:
            _plan_rest(store, record, job, source)
    else:
        first = source() if job.target is None else islice(source(), first_wave(job.target))
        _plan_into_store(store, record, lambda sink: plan_job(job, rows=first, sink=sink), "plan")
    settings = _settings(
        job.limits,
        local=job.provider.kind == "local",
        tier=job.provider.tier,
        budget=job.budget.max_usd,
        prices=prices,
        poll_interval=poll_interval,
        detach=detach,
        cancel_on_exit=cancel_on_exit,
    )
    settings = _strategy_settings(job, settings, store.run(run_id))
    check = answer_check(job, store, run_id, response_model)
    owned = provider is None
    provider = provider or provider_for(job.provider, state_dir=Path(state_dir))

    def drive(target: TargetCounter | None = None) -> RunStatus:
        assert provider is not None
        with open_runner(
            store, run_id, state_dir, provider, settings, on_progress, not fresh, check, target
        ) as runner:
            return runner.run()

    try:
        if job.target is None:
            status = drive()
        else:
            status = _run_to_target(store, record, job, source, drive)
    finally:
        if owned:
            provider.close()
    output = None
    if status.finished and job.output is not None:
        output = job.resolve(job.output.path)
        export_job(store, run_id, job, output)
    return RunResult(run_id, status, output)


def _plan_rest(
    store: Store, record: RunRecord, job: JobSpec, source: Callable[[], Iterable[Row]]
) -> None:
    """A run that had a target and now has none: everything is wanted again."""
    revived = store.revive_cancelled(record.id)
    start = store.next_row_index(record.id)
    rest = islice(source(), start, None)
    result = _plan_into_store(
        store, record, lambda sink: plan_job(job, rows=rest, sink=sink), "plan", create=False
    )
    store.event(
        record.id, "planned", f"no target now: {revived} requests revived, {result.rows} rows added"
    )


def _run_to_target(
    store: Store,
    record: RunRecord,
    job: JobSpec,
    source: Callable[[], Iterable[Row]],
    drive: Callable[[TargetCounter | None], RunStatus],
) -> RunStatus:
    """Run wave after wave until the target is met: each wave plans as many more rows as the
    pass rate so far says are needed, with the job's overshoot to spare."""
    target = job.target
    assert target is not None
    counter = TargetCounter(store, record.id, target)
    if not counter.met() and store.revive_cancelled(record.id):
        store.event(record.id, "target", "the target is not met: cancelled requests revived")
    while True:
        status = drive(counter)
        if not status.finished or counter.met():
            return status
        produced = counter.count()
        outcomes = store.row_outcomes(record.id)
        ended = outcomes.get("succeeded", 0) + outcomes.get("failed", 0)
        if produced == 0 and status.total > 0:
            reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(status.failures.items()))
            raise UserInputError(
                f"none of the {ended} answers so far is valid ({reasons or 'no answers'}); "
                "check the prompt, the schema and the validators, then run again"
            )
        start = store.next_row_index(record.id)
        size = next_wave(target, produced, ended) if ended else first_wave(target)
        wave = islice(source(), start, start + size)
        result = _plan_into_store(store, record, _planner(job, wave), "plan", create=False)
        if result.rows == 0:
            store.event(
                record.id,
                "target",
                f"the input is used up with {produced} of {target.valid} valid; add rows to "
                "the input and run again",
            )
            status.target, status.valid = target.valid, produced
            return status
        store.event(
            record.id,
            "target",
            f"{produced} of {target.valid} valid from {ended} rows; "
            f"{result.rows} more rows planned",
        )


def _planner(job: JobSpec, rows: Iterable[Row]) -> Callable[[StoreSink], PlanResult]:
    return lambda sink: plan_job(job, rows=rows, sink=sink)


def run_requests_file(
    path: Path,
    *,
    provider: Provider,
    state_dir: Path = DEFAULT_STATE_DIR,
    kind: str = "openai",
    budget: float | None = None,
    on_progress: Callable[[RunStatus], None] | None = None,
    detach: bool = False,
    poll_interval: float | None = None,
    model: str | None = None,
    base_url: str | None = None,
) -> RunResult:
    """Run a standard OpenAI batch JSONL file as it is; results keep its custom ids."""
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    spec = json.dumps(
        {
            "requests": str(path.resolve()),
            "sha256": digest,
            "provider": kind,
            "model": model,
            "base_url": _USERINFO.sub("", base_url) if base_url else None,
        }
    )
    run_id = run_id_for(re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)[:40] or "requests", spec)
    with run_lock(state_dir, run_id):
        store = open_store(state_dir)
        try:
            if store.run(run_id) is None:
                record = RunRecord(
                    run_id, path.stem, spec, kind, "mixed", "planned", budget, utc_now()
                )
                _plan_into_store(
                    store,
                    record,
                    lambda sink: plan_requests_file(
                        path, local=kind == "local", sink=sink, model=model, budget_usd=budget
                    ),
                    "requests file",
                )
            settings = _settings(
                LimitsSpec(),
                local=kind == "local",
                tier=1,
                budget=budget,
                prices=PriceTable.load(),
                poll_interval=poll_interval,
                detach=detach,
                cancel_on_exit=False,
            )
            with open_runner(
                store, run_id, state_dir, provider, settings, on_progress, True
            ) as runner:
                status = runner.run()
        finally:
            store.close()
    return RunResult(run_id, status)


def status_of(state_dir: Path, run_id: str | None = None) -> RunStatus:
    store = open_store(state_dir)
    try:
        run = find_run(store, run_id)
        return run_status(store, run.id)
    finally:
        store.close()
