"""A stored run's progress, from the store alone: `status_of`, in brief or in detail."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.workspace import find_run, store_at
from batchpilot.store import BatchRecord, RunRecord

if TYPE_CHECKING:
    from batchpilot.spec import JobSpec

__all__ = ["RunDetail", "last_stop", "status_of"]

EVENTS_SHOWN = 5
"""How many of a run's latest events its detailed status holds."""


@dataclass
class RunDetail:
    """A run's progress with what `batchpilot status` shows beside it: the target reached so
    far (in `status`), each step of a pipeline that has a run yet, the batches, and the
    latest events."""

    status: RunStatus
    steps: list[tuple[str, RunStatus]] = field(default_factory=list)
    batches: list[BatchRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = self.status.as_json()
        if self.steps:
            data["steps"] = [{"step": name, **step.as_json()} for name, step in self.steps]
        data["batch_list"] = [
            {
                "id": b.id,
                "state": b.state,
                "remote_id": b.remote_id,
                "remote_status": b.remote_status,
                "requests": b.requests,
                "completed": b.completed,
                "failed": b.failed,
                "not_found": b.not_found,
            }
            for b in self.batches
        ]
        return data


@overload
def status_of(
    state_dir: Path, run_id: str | None = None, *, detail: Literal[False] = False
) -> RunStatus: ...


@overload
def status_of(
    state_dir: Path, run_id: str | None = None, *, detail: Literal[True]
) -> RunDetail: ...


@overload
def status_of(
    state_dir: Path, run_id: str | None = None, *, detail: bool
) -> RunStatus | RunDetail: ...


def status_of(
    state_dir: Path, run_id: str | None = None, *, detail: bool = False
) -> RunStatus | RunDetail:
    """A run's progress (the latest run's by default), from the store alone; with `detail`,
    also its target so far, its pipeline's steps, its batches and its latest events."""
    with store_at(state_dir) as store:
        record = find_run(store, run_id)
        current = run_status(store, record.id)
        if not detail:
            return current
        job = _job_of(record)
        steps: list[tuple[str, RunStatus]] = []
        if job is not None and job.target is not None:
            current.target = job.target.valid
            from batchpilot.run.target import TargetCounter

            current.valid = TargetCounter(store, record.id, job.target).count()
        if job is not None and job.steps is not None:
            from batchpilot.run.identity import step_runs

            steps = [
                (run.name, run_status(store, run.run_id))
                for run in step_runs(job)
                if store.run(run.run_id) is not None
            ]
        batches = store.batches(record.id)
        events = store.events(record.id)[-EVENTS_SHOWN:]
    return RunDetail(current, steps, batches, events)


def _job_of(record: RunRecord) -> JobSpec | None:
    """The run's job when it has a target or steps (which its status shows); a plain run's
    status reads no job, and so loads neither the job model nor the planner."""
    data = json.loads(record.spec_json or "{}")
    if not isinstance(data, dict) or (data.get("target") is None and data.get("steps") is None):
        return None
    from batchpilot.run.identity import job_of

    return job_of(record)


# The events a runner records as it stops: with its batches cancelled, or left running.
_STOP_EVENTS = ("cancelled", "stopped")


def last_stop(state_dir: Path, run_id: str) -> str | None:
    """How the run last stopped: "cancelled" (its remote batches cancelled), "stopped" (left
    running remotely), or None when it never stopped."""
    with store_at(state_dir) as store:
        ends = [e["kind"] for e in store.events(run_id) if e["kind"] in _STOP_EVENTS]
    return ends[-1] if ends else None
