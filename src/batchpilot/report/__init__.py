"""A run as one self-contained HTML file: a short summary, then plots of progress by lane,
spend against the budget and the deadline, batches on a timeline, turnaround, tokens,
failures, retries, rejected answers and the plan's estimate beside the actual.

Made from the store alone, for a finished run or one still going; a pipeline gets a section
per step. The plots need the `report` extra (plotly); its script is inlined, so the file
opens with no network.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from batchpilot.errors import UserInputError
from batchpilot.report.facts import RunFacts, gather
from batchpilot.run.api import DEFAULT_STATE_DIR, find_run, job_of, open_store
from batchpilot.store import Store

__all__ = ["build_report", "write_report"]

STORE_FILE = "batchpilot.sqlite3"


def build_report(store: Store, run_id: str | None = None, *, now: datetime | None = None) -> str:
    """The report's HTML for a run (the latest by default); for a step of a pipeline, every
    step that has a run so far."""
    from batchpilot.report.page import render_page

    record = find_run(store, run_id)
    job = job_of(record)
    sections: list[tuple[str, str | None, RunFacts]] = []
    if job is not None and job.steps is not None:
        from batchpilot.run.pipeline import step_runs

        for number, step in enumerate(step_runs(job), start=1):
            found = store.run(step.run_id)
            if found is not None:
                heading = f"Step {number}: {step.step.name}"
                facts = gather(store, found, job=step.job, now=now)
                sections.append((f"step-{number}", heading, facts))
        name = job.name
        intro = f"A pipeline of {len(job.steps)} steps; {len(sections)} have started."
    else:
        sections.append(("run", None, gather(store, record, now=now)))
        name = record.job_name
        intro = f"Made from the store on {(now or datetime.now()).astimezone():%Y-%m-%d %H:%M %Z}."
    return render_page(f"batchpilot report: {name}", sections, intro)


def write_report(
    run_id: str | None = None,
    *,
    state_dir: Path | str = DEFAULT_STATE_DIR,
    output: Path | str = "report.html",
) -> Path:
    """Write the report of a run (the latest in `state_dir` by default) to `output`; returns
    the path written. Safe beside a running `batchpilot run`: it only reads the store."""
    target, state = Path(output), Path(state_dir)
    if not (state / STORE_FILE).is_file():
        raise UserInputError(f"{state}: no runs here (no store); check the state directory")
    store = open_store(state)
    try:
        page = build_report(store, run_id)
    finally:
        store.close()
    target.write_text(page, encoding="utf-8")
    return target
