"""Running jobs from Python: the same functions the CLI calls.

result = run_job(load_job("job.yaml"))            # plan, submit, wait, export
print(result.status.done, result.status.spent_usd)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel

from batchpilot.data.rows import Row
from batchpilot.errors import UserInputError
from batchpilot.plan import plan_requests_file
from batchpilot.pricing import PriceTable
from batchpilot.providers import Provider
from batchpilot.run.identity import requests_identity
from batchpilot.run.one import RunResult, open_runner, run_one
from batchpilot.run.pipeline import run_pipeline
from batchpilot.run.settings import limit_settings
from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.store_sink import plan_run
from batchpilot.run.workspace import DEFAULT_STATE_DIR, find_run, run_lock, store_at
from batchpilot.spec import JobSpec, LimitsSpec
from batchpilot.store import RunKind, RunRecord, utc_now

__all__ = ["run_job", "run_requests_file", "status_of"]


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
    response_model: type[BaseModel] | None = None,
) -> RunResult:
    """Plan the job into the store (once), then run it to the end and export its output.

    Running the same job again continues its run: the run id is a hash of the job. A job
    with `steps` runs them in order, each a run of its own; a job with a `target` plans its
    rows in waves and stops once the target is met. `rows` replaces the job's input file;
    `provider` the provider its job names (and is left open). `response_model` is the pydantic
    model the job's schema file was written from, whose own validators answers must pass.
    """
    if job.steps is not None:
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
    return run_one(
        job,
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
    run_id, spec = requests_identity(path, kind=kind, model=model, base_url=base_url)
    with run_lock(state_dir, run_id), store_at(state_dir) as store:
        if store.run(run_id) is None:
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
                    path, local=kind == "local", sink=sink, model=model, budget_usd=budget
                ),
                "requests file",
            )
        settings = limit_settings(
            LimitsSpec(),
            local=kind == "local",
            tier=1,
            budget=budget,
            prices=PriceTable.load(),
            poll_interval=poll_interval,
            detach=detach,
            cancel_on_exit=False,
        )
        with open_runner(store, run_id, state_dir, provider, settings, on_progress, True) as runner:
            status = runner.run()
    return RunResult(run_id, status)


def status_of(state_dir: Path, run_id: str | None = None) -> RunStatus:
    """A run's progress (the latest run's by default), from the store alone."""
    with store_at(state_dir) as store:
        return run_status(store, find_run(store, run_id).id)
