"""Running jobs from Python: the same functions the CLI calls.

result = run_job(load_job("job.yaml"))            # plan, submit, wait, export
print(result.status.done, result.status.spent_usd)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

from pydantic import BaseModel

from batchpilot.data.rows import Row
from batchpilot.errors import UserInputError
from batchpilot.plan import plan_requests_file
from batchpilot.pricing import prices_for
from batchpilot.providers import Provider, openai_provider
from batchpilot.run.identity import job_of, requests_identity
from batchpilot.run.lease import RunLease
from batchpilot.run.limits import account_of_parts
from batchpilot.run.one import RunResult, open_runner, run_one
from batchpilot.run.pipeline import run_pipeline
from batchpilot.run.settings import limit_settings
from batchpilot.run.status import RunStatus
from batchpilot.run.store_sink import plan_run
from batchpilot.run.workspace import DEFAULT_STATE_DIR, find_run, run_lock, store_at
from batchpilot.spec import JobSpec, LimitsSpec
from batchpilot.store import RunKind, RunRecord, utc_now

__all__ = ["resume", "run_job", "run_requests_file"]


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
    provider: Provider | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    kind: str = "openai",
    budget: float | None = None,
    on_progress: Callable[[RunStatus], None] | None = None,
    detach: bool = False,
    poll_interval: float | None = None,
    model: str | None = None,
    base_url: str | None = None,
) -> RunResult:
    """Run a standard OpenAI batch JSONL file as it is; results keep its custom ids.

    The provider is `provider`, else the OpenAI-compatible one of `kind` (openai, azure or
    compatible) at `base_url`, with its key from the environment.
    """
    if provider is None and kind == "local":
        raise UserInputError("a requests file runs on openai, azure or compatible providers")
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    run_id, spec = requests_identity(path, kind=kind, model=model, base_url=base_url)
    with ExitStack() as held:
        taken = held.enter_context(run_lock(state_dir, run_id))
        store = held.enter_context(store_at(state_dir))
        if provider is None:
            provider = openai_provider(base_url=base_url, kind=kind)  # type: ignore[arg-type]
            held.callback(provider.close)
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
            prices=prices_for(kind),
            poll_interval=poll_interval,
            detach=detach,
            cancel_on_exit=False,
        )
        with open_runner(
            store,
            run_id,
            state_dir,
            provider,
            settings,
            on_progress,
            True,
            account=account_of_parts(kind, base_url, None),
            fence=taken.fence if isinstance(taken, RunLease) else None,
        ) as runner:
            status = runner.run()
    return RunResult(run_id, status)


def resume(
    state_dir: Path = DEFAULT_STATE_DIR,
    run_id: str | None = None,
    *,
    on_progress: Callable[[RunStatus], None] | None = None,
    detach: bool = False,
    poll_interval: float | None = None,
) -> RunResult:
    """Continue a run (the latest one by default) from the store, without its job file.

    A job's run continues with the job it recorded (a pipeline's step with the whole
    pipeline). The run of a requests file continues with the same `run_requests_file` call,
    and a task's by running the task again: the store has neither the file's provider nor
    the task's program, so those are clear errors saying so.
    """
    with store_at(state_dir) as store:
        record = find_run(store, run_id)
    if record.kind == RunKind.TASK:
        raise UserInputError(
            f"run {record.id} is a task's run; resume it by running the task again (its "
            "results go to its on_result, which only its own program has)"
        )
    if record.kind == RunKind.REQUESTS:
        raise UserInputError(
            f"run {record.id} ran a requests file; resume it with the same `batchpilot run "
            "--requests FILE` command"
        )
    job = job_of(record)
    assert job is not None, f"a run of kind {record.kind} records its job"
    return run_job(
        job,
        state_dir=state_dir,
        on_progress=on_progress,
        detach=detach,
        poll_interval=poll_interval,
    )
