"""A run as one self-contained HTML file: a short summary, then plots of progress by lane,
spend against the budget and the deadline, batches on a timeline, turnaround, tokens,
failures, retries, rejected answers and the plan's estimate beside the actual.

Made from the store alone, for a finished run or one still going; a pipeline gets a section
per step. The plots need the `report` extra (plotly); its script is inlined, so the file
opens with no network. With `wandb`, the same facts go to a Weights & Biases project too.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from batchpilot.errors import UserInputError
from batchpilot.report.facts import RunFacts, gather
from batchpilot.run.identity import job_of
from batchpilot.run.workspace import DEFAULT_STATE_DIR, find_run, open_store
from batchpilot.store import Store
from batchpilot.store.opening import store_exists

__all__ = ["build_report", "write_report"]

Sections = list[tuple[str, str | None, RunFacts]]


def _sections(store: Store, run_id: str | None, now: datetime | None) -> tuple[str, str, Sections]:
    """The report's title, its first line, and (anchor, heading, facts) of each section."""
    record = find_run(store, run_id)
    job = job_of(record)
    sections: Sections = []
    if job is not None and job.steps is not None:
        from batchpilot.run.identity import step_runs

        for number, step in enumerate(step_runs(job), start=1):
            found = store.run(step.run_id)
            if found is not None:
                heading = f"Step {number}: {step.step.name}"
                facts = gather(store, found, job=step.job, now=now)
                sections.append((f"step-{number}", heading, facts))
        return (
            job.name,
            f"A pipeline of {len(job.steps)} steps; {len(sections)} have started.",
            sections,
        )
    sections.append(("run", None, gather(store, record, now=now)))
    made = f"Made from the store on {(now or datetime.now()).astimezone():%Y-%m-%d %H:%M %Z}."
    return record.job_name, made, sections


def build_report(store: Store, run_id: str | None = None, *, now: datetime | None = None) -> str:
    """The report's HTML for a run (the latest by default); for a step of a pipeline, every
    step that has a run so far."""
    from batchpilot.report.page import render_page

    name, intro, sections = _sections(store, run_id, now)
    return render_page(f"batchpilot report: {name}", sections, intro)


def write_report(
    run_id: str | None = None,
    *,
    state_dir: Path | str = DEFAULT_STATE_DIR,
    output: Path | str = "report.html",
    wandb: str | None = None,
) -> Path:
    """Write the report of a run (the latest in `state_dir` by default) to `output`; returns
    the path written. With `wandb` (a project), also log each run's progress, spend, tokens and
    failures there, with the report as an artifact. Safe beside a running `batchpilot run`: it
    only reads the store."""
    from batchpilot.report.page import render_page

    target, state = Path(output), Path(state_dir)
    if not store_exists(state):
        raise UserInputError(f"{state}: no runs here (no store); check the state directory")
    store = open_store(state)
    try:
        name, intro, sections = _sections(store, run_id, None)
    finally:
        store.close()
    target.write_text(render_page(f"batchpilot report: {name}", sections, intro), encoding="utf-8")
    if wandb is not None:
        from batchpilot.report.wandb_log import log_to_wandb

        log_to_wandb(wandb, [facts for _, _, facts in sections], target)
    return target
