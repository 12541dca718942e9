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
from batchpilot.providers import Provider
from batchpilot.run.display import shown_progress
from batchpilot.run.identity import job_of
from batchpilot.run.one import RunResult, run_one
from batchpilot.run.pipeline import run_pipeline
from batchpilot.run.requests_file import run_requests_file
from batchpilot.run.status import RunStatus
from batchpilot.run.workspace import DEFAULT_STATE_DIR, find_run, store_at
from batchpilot.spec import JobSpec
from batchpilot.store import RunKind
from batchpilot.store.opening import named_store

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
    progress: bool | None = None,
) -> RunResult:
    """Plan the job into the store (once), then run it to the end and export its output.

    Running the same job again continues its run: the run id is a hash of the job. A job
    with `steps` runs them in order, each a run of its own; a job with a `target` plans its
    rows in waves and stops once the target is met. `rows` replaces the job's input file;
    `provider` the provider its job names (and is left open). `response_model` is the pydantic
    model the job's schema file was written from, whose own validators answers must pass.
    `progress` shows the run's progress on stderr (None: only when stderr is a terminal);
    `on_progress` is given the run's status after every round and each step within one
    (an upload, a batch submitted, a collection), and at its end.
    """
    with named_store(job.store), shown_progress(progress, on_progress) as report:
        if job.steps is not None:
            return run_pipeline(
                job,
                state_dir=state_dir,
                rows=rows,
                provider=provider,
                on_progress=report,
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
            on_progress=report,
            detach=detach,
            cancel_on_exit=cancel_on_exit,
            poll_interval=poll_interval,
            fresh=fresh,
            response_model=response_model,
        )


def resume(
    state_dir: Path = DEFAULT_STATE_DIR,
    run_id: str | None = None,
    *,
    on_progress: Callable[[RunStatus], None] | None = None,
    detach: bool = False,
    poll_interval: float | None = None,
    progress: bool | None = None,
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
        progress=progress,
    )
