"""Multi-step jobs: each step is a run of its own over the rows whose earlier steps succeeded.

Step k's templates see the answers of steps 1..k-1 as `steps.NAME`. Every step is planned
into the store once and run by `run_one` like any job, so a crash in step 3 continues step 3:
steps 1 and 2 are finished runs and send nothing again. A step's run id hashes its own
definition and the run ids of the steps before it (`run/identity.py`), so changing step 1
makes every later step new too.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from batchpilot.data import read_rows
from batchpilot.data.rows import Row
from batchpilot.errors import UserInputError
from batchpilot.export.job import write_job_output
from batchpilot.export.progress import ExportProgress, counted
from batchpilot.export.rows import ExportFormat, ExportRow
from batchpilot.export.steps import aligned, pipeline_export_rows, step_answer
from batchpilot.plan.job import input_spec
from batchpilot.providers import Provider
from batchpilot.run.identity import StepRun, pipeline_id, step_runs
from batchpilot.run.one import RunResult, owned_provider, run_one
from batchpilot.run.status import RunStatus
from batchpilot.run.workspace import store_at
from batchpilot.spec import JobSpec

__all__ = ["export_pipeline", "pipeline_rows", "run_pipeline"]

STEPS_FIELD = "steps"
"""The template variable holding earlier steps' answers."""


def pipeline_rows(state_dir: Path, runs: list[StepRun]) -> Generator[Row, None, None]:
    """The rows of the step after `runs`: each row whose every earlier step succeeded, its
    input fields plus `steps` (the answers so far, by step name)."""
    with store_at(state_dir) as store:
        for line in aligned(store, runs):
            done = [row for row in line if row is not None and row.status == "succeeded"]
            if len(done) < len(runs):
                continue
            first = done[0]
            data = dict(first.data or {})
            data[STEPS_FIELD] = {
                run.step.name: step_answer(row) for run, row in zip(runs, done, strict=True)
            }
            yield Row(first.index, first.row_id, data, f"{_input_name(runs[0].job)}:{first.row_id}")


def _check_first_rows(rows: Iterable[Row]) -> Generator[Row, None, None]:
    for row in rows:
        if STEPS_FIELD in row.data:
            raise UserInputError(
                f"{row.source}: the input has a field '{STEPS_FIELD}', which a multi-step job "
                "uses for the earlier steps' answers; rename that field"
            )
        yield row


def _combined(statuses: list[RunStatus], run_id: str, budget: float | None) -> RunStatus:
    """The pipeline's progress: every step's requests, batches, tokens and money together."""
    total = RunStatus(run_id, statuses[-1].status, {}, {}, budget_usd=budget)
    for status in statuses:
        for name, source in (("requests", status.requests), ("batches", status.batches)):
            into = getattr(total, name)
            for key, value in source.items():
                into[key] = into.get(key, 0) + value
        for key, value in status.failures.items():
            total.failures[key] = total.failures.get(key, 0) + value
        for key, value in status.remote.items():
            total.remote[key] = total.remote.get(key, 0) + value
        total.input_tokens += status.input_tokens
        total.output_tokens += status.output_tokens
        total.spent_usd += status.spent_usd
        total.reserved_usd += status.reserved_usd
    return total


def run_pipeline(
    job: JobSpec,
    *,
    state_dir: Path,
    rows: Iterable[Row] | None = None,
    provider: Provider | None = None,
    on_progress: Callable[[RunStatus], None] | None = None,
    **options: Any,
) -> RunResult:
    """Run every step in order; return when all have finished (or one stopped or detached).

    The budget covers the whole pipeline: each step may spend what the steps before it left.
    """
    runs = step_runs(job)
    finished: list[RunStatus] = []
    budget = job.budget.max_usd
    with owned_provider(provider, job, state_dir) as chosen:
        for number, run in enumerate(runs):
            if number == 0:
                given = rows if rows is not None else read_rows(input_spec(job))
                step_rows: Generator[Row, None, None] = _check_first_rows(given)
            else:
                step_rows = pipeline_rows(state_dir, runs[:number])
            spent = sum(status.spent_usd for status in finished)
            left = None if budget is None else max(0.0, budget - spent)
            limit = job.budget.model_copy(update={"max_usd": left})
            step = run.job.model_copy(update={"budget": limit})

            def progress(status: RunStatus, done: list[RunStatus] = finished) -> None:
                if on_progress is not None:
                    on_progress(_combined([*done, status], pipeline_id(runs), budget))

            # Closed however the step ends: the rows of a later step hold the store open.
            with closing(step_rows):
                result = run_one(
                    step,
                    state_dir=state_dir,
                    rows=step_rows,
                    provider=chosen,
                    on_progress=progress,
                    run_id=run.run_id,
                    recorded=job,
                    **options,
                )
            finished.append(result.status)
            if not result.status.finished:
                return RunResult(run.run_id, _combined(finished, pipeline_id(runs), budget))
    status = _combined(finished, pipeline_id(runs), budget)
    output = None
    if job.output is not None:
        output = job.resolve(job.output.path)
        export_pipeline(state_dir, job, output)
    return RunResult(runs[-1].run_id, status, output)


def export_pipeline(
    state_dir: Path,
    job: JobSpec,
    target: Path,
    *,
    format: ExportFormat | None = None,
    include_input: bool | None = None,
    progress: ExportProgress | None = None,
) -> int:
    """Write a pipeline's output: one row per input row with every step's answer (in
    `format`, with or without the input fields, when they are given); `progress` is told how
    many rows have been made."""
    with store_at(state_dir) as store:
        runs = step_runs(job)
        rows: Iterator[ExportRow] = pipeline_export_rows(store, runs)
        if progress is not None and runs:
            rows = counted(rows, store.next_row_index(runs[0].run_id), progress)
        return write_job_output(job, rows, target, format=format, include_input=include_input)


def _input_name(job: JobSpec) -> str:
    return job.input.path if job.input.path is not None else str(job.input.dataset)
