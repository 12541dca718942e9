"""`batchpilot worker`: a process that takes runs from a shared store and drives them.

Each run is claimed under a lease (`Store.claim_run`, `run/lease.py`): by default one worker
drives a run at a time and many workers drive many runs at once; with `per_run` (a PostgreSQL
store) up to that many workers drive one run together, each its own batches and real-time
requests, under one budget held in the store. A run whose worker died (kill -9, a lost host) is
claimed by another once the lease runs out, and what the dead worker left is taken over as a
restarted runner takes it over: batches are adopted from the provider's listing, never created
twice, and real-time requests left in flight are counted at their worst case and sent again.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from batchpilot.errors import BatchpilotError, UserInputError
from batchpilot.run.identity import job_of
from batchpilot.run.lease import DEFAULT_LEASE_S, LeaseLost, RunLease, worker_id
from batchpilot.run.one import run_one
from batchpilot.run.workspace import store_at
from batchpilot.store import RunState, Store, opening
from batchpilot.store.shared import CLAIMABLE_KINDS, CLAIMABLE_STATES

__all__ = ["WorkerReport", "work"]


@dataclass
class WorkerReport:
    """What a worker did: each run it took, and how that ended."""

    worker: str
    runs: list[tuple[str, str]] = field(default_factory=list)


def _say(message: str) -> None:
    print(f"batchpilot worker: {message}", file=sys.stderr, flush=True)


@contextmanager
def _stoppable(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM (systemd, Kubernetes) stops the worker: a run it drives stops after the
    current step (the runner's own Ctrl-C handling) and is let go for another worker."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_int(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()
        os.kill(os.getpid(), signal.SIGINT)  # to whichever Ctrl-C handler is in place

    previous = signal.signal(signal.SIGINT, on_int), signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _work_left(store: Store, run_ids: Sequence[str] | None, skip: set[str]) -> bool:
    """Whether any run (of `run_ids`) still has work a worker could take, now or once another
    worker's lease runs out."""
    return any(
        r.status in CLAIMABLE_STATES
        and r.kind in CLAIMABLE_KINDS
        and (run_ids is None or r.id in run_ids)
        and r.id not in skip
        for r in store.runs()
    )


def work(
    state_dir: Path,
    run_ids: Sequence[str] | None = None,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    idle_s: float = 2.0,
    exit_when_idle: bool = False,
    stop: threading.Event | None = None,
    on_taken: Callable[[str], None] | None = None,
    per_run: int | None = 1,
) -> WorkerReport:
    """Take runs (any, or those of `run_ids`) from the store and drive each to its end, until
    stopped; with `exit_when_idle`, until no run has work left. A run that fails on this worker
    (its key missing here, a user's error) is left to other workers. `per_run`: join a run
    that fewer than this many other workers drive (None: any number; more than 1 needs a
    PostgreSQL store)."""
    stop = stop or threading.Event()
    report = WorkerReport(worker_id())
    skip: set[str] = set()
    with _stoppable(stop), store_at(state_dir) as store:
        if per_run != 1 and opening.store_url() is None:
            raise UserInputError(
                "--per-run other than 1 needs a PostgreSQL store (--store or BATCHPILOT_STORE): "
                "on the SQLite store a run is held by one process at a time"
            )
        _say(f"{report.worker} takes runs from {store.where}")
        while not stop.is_set():
            asked = time.monotonic()
            claim = store.claim_run(
                report.worker, lease_s, run_ids or None, sorted(skip), per_run=per_run
            )
            if claim is None:
                if exit_when_idle and not _work_left(store, run_ids, skip):
                    break
                stop.wait(idle_s)
                continue
            run_id = claim.run.id
            lease = RunLease(
                run_id, store=store, worker=report.worker, ttl_s=lease_s, per_run=per_run
            )
            lease.held(asked)
            taken = (
                f"worker {report.worker} takes the run over from worker {claim.previous}, "
                "whose lease ran out"
                if claim.previous
                else f"worker {report.worker} takes the run"
            )
            store.event(run_id, "worker", taken)
            _say(f"run {run_id}: {taken.removeprefix(f'worker {report.worker} ')}")
            if on_taken is not None:
                on_taken(run_id)
            outcome = _drive(store, state_dir, claim.run.id, lease, skip)
            report.runs.append((run_id, outcome))
            _say(f"run {run_id}: {outcome}")
    return report


def _drive(store: Store, state_dir: Path, run_id: str, lease: RunLease, skip: set[str]) -> str:
    """Drive one leased run; what became of it."""
    record = store.run(run_id)
    job = None if record is None else job_of(record)
    try:
        if job is None or job.steps is not None:
            skip.add(run_id)
            return "not a job's run a worker can drive; left alone"
        result = run_one(job, state_dir=state_dir, run_id=run_id, lease=lease, export=False)
        status = result.status.status
        if status == RunState.STOPPED:
            # stopped by this worker's own stop: the run is let go, for another worker
            store.move_run(run_id, RunState.RUNNING)
            store.event(run_id, "worker", f"worker {lease.worker} stopped and let the run go")
            return "let go (the worker stops)"
        return status
    except LeaseLost as exc:
        return str(exc)
    except BatchpilotError as exc:
        skip.add(run_id)
        store.event(run_id, "worker", f"worker {lease.worker} could not drive the run: {exc}")
        return f"left to other workers: {exc}"
    finally:
        lease.release()
