"""Finding runs as people name them: an id, the start of one, or the name of its job; and the
state directory, found the way git finds its own."""

from __future__ import annotations

from pathlib import Path

from batchpilot.errors import UserInputError
from batchpilot.store import RunRecord, Store
from batchpilot.store.opening import SQLITE_FILE

__all__ = [
    "STATE_DIR_NAME",
    "find_state_dir",
    "resolve_run",
    "updated_at",
]

STATE_DIR_NAME = ".batchpilot"


def find_state_dir(start: Path | None = None) -> Path | None:
    """The nearest `.batchpilot` directory holding a store, in `start` (default: the current
    directory) or the directories above it; None when there is none up to the root."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / STATE_DIR_NAME
        if (candidate / SQLITE_FILE).is_file():
            return candidate
    return None


def resolve_run(store: Store, given: str | None) -> RunRecord:
    """The run `given` names: its id, its job's name, or the start of its id (the latest run
    when None). A name or prefix that fits several runs is an error listing them."""
    runs = store.runs()
    if not runs:
        named = "no runs" if given is None else f"no run '{given}' (nor any other)"
        raise UserInputError(f"{named} in {store.where} yet; start one with `batchpilot run`")
    if given is None:
        return runs[0]
    exact = store.run(given)
    if exact is not None:
        return exact
    matches = [run for run in runs if run.job_name == given]
    kind = "job name"
    if not matches:
        matches = [run for run in runs if run.id.startswith(given)]
        kind = "id prefix"
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserInputError(
            f"no run '{given}' in {store.where} (neither an id, the start of one, nor a job's "
            "name); `batchpilot ls` lists them"
        )
    listed = "\n".join(
        f"  {run.id}  {run.job_name}  {run.status}  created {run.created_at_utc}" for run in matches
    )
    raise UserInputError(
        f"'{given}' is the {kind} of {len(matches)} runs in {store.where}; give one of their "
        f"ids (or enough of its start):\n{listed}"
    )


def updated_at(store: Store, run: RunRecord) -> str:
    """When the run last changed: its latest event, else when it finished or was created."""
    events = store.events(run.id)
    if events:
        return str(events[-1]["at_utc"])
    return run.finished_at_utc or run.created_at_utc
