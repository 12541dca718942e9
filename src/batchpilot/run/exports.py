"""A stored run's export, as `batchpilot export` writes it: a job's run as its output section
says (a pipeline's as one row per input row), any other run as a table of every row."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchpilot.errors import MissingDependency, UserInputError
from batchpilot.export import ExportFormat, export_job, export_run
from batchpilot.export.progress import ExportProgress
from batchpilot.run.identity import job_of
from batchpilot.run.workspace import find_run, store_at

__all__ = ["Exported", "export_results", "results_frame"]


@dataclass(frozen=True)
class Exported:
    """What an export wrote: whose rows, where, and how many."""

    run_id: str
    path: Path
    rows: int


def export_results(
    state_dir: Path,
    run_id: str | None = None,
    output: Path | None = None,
    *,
    format: ExportFormat = "auto",
    include_input: bool = True,
    all_rows: bool = False,
    progress: ExportProgress | None = None,
) -> Exported:
    """Write a run's results (the latest run's by default), joined to its input rows, in input
    order.

    A job's run is written as its output section says, whatever `format` and
    `include_input` change: the same rows (target mode's first N valid ones, fallbacks
    applied), written back into the input records when the job says so; `output` defaults
    to the job's `output.path`, in the job's own format unless `format` says otherwise.
    `all_rows` writes every row of the run as a table instead (to `output`, which it needs),
    as does the run of a requests file or of a task. `progress` is told, as the rows are
    written, how many have been and how many there are.
    """
    if all_rows and output is None:
        raise UserInputError(
            "all rows need an output path of their own: the job's output.path holds the "
            "job's output"
        )
    with store_at(state_dir) as store:
        record = find_run(store, run_id)
        job = job_of(record)
        chosen: ExportFormat | None = format
        if output is None:
            if job is None or job.output is None:
                raise UserInputError(
                    "give an output path (-o FILE): this run's job names no output.path"
                )
            output = job.resolve(job.output.path)
            chosen = None if format == "auto" else format
        include = False if not include_input else None
        if all_rows or job is None:
            count = export_run(
                store,
                record.id,
                output,
                format=format,
                include_input=include_input,
                progress=progress,
            )
        elif job.steps is not None:
            from batchpilot.run.pipeline import export_pipeline  # runs and plans: loaded if used

            count = export_pipeline(
                state_dir, job, output, format=chosen, include_input=include, progress=progress
            )
        else:
            count = export_job(
                store,
                record.id,
                job,
                output,
                format=chosen,
                include_input=include,
                progress=progress,
            )
    return Exported(record.id, output, count)


def results_frame(
    state_dir: Path | str,
    run_id: str | None = None,
    *,
    library: Literal["pandas", "polars"] = "pandas",
    include_input: bool = True,
    all_rows: bool = False,
) -> Any:
    """A run's results (the latest run's by default) as a pandas or Polars DataFrame: the
    rows and columns of a Parquet export (`id`, `status`, `input.*`, `output...`, tokens,
    `cost_usd`, `error`), as the job's output section makes them unless `all_rows`."""
    if library not in ("pandas", "polars"):
        raise UserInputError(f"library is {library!r}; use pandas or polars")
    try:
        reader = __import__(library)
    except ImportError:
        raise MissingDependency(
            f"a {library} DataFrame needs {library}: pip install 'batchpilot[{library}]'"
        ) from None
    with tempfile.TemporaryDirectory(prefix="batchpilot-frame-") as scratch:
        table = Path(scratch) / "results.parquet"
        export_results(
            Path(state_dir),
            run_id,
            table,
            format="parquet",
            include_input=include_input,
            all_rows=all_rows,
        )
        return reader.read_parquet(table)
