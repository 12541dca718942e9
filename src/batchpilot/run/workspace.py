"""The state directory: its store, the lock (or lease) that keeps a run to one process, finding
a run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchpilot.run.lease import PER_RUN_ENV, RunLease, per_run_limit
from batchpilot.run.lookup import resolve_run
from batchpilot.store import RunLock, RunRecord, Store, opening

__all__ = [
    "DEFAULT_STATE_DIR",
    "find_run",
    "has_store",
    "open_store",
    "run_files",
    "run_lock",
    "store_at",
]

DEFAULT_STATE_DIR = Path(".batchpilot")


def has_store(state_dir: Path) -> bool:
    """Whether `state_dir` holds a store (opening one where there is none creates it), or
    `BATCHPILOT_STORE` names a PostgreSQL store."""
    return opening.store_exists(Path(state_dir))


def open_store(state_dir: Path) -> Store:
    """The store of `state_dir` (created with it when there is none), or the PostgreSQL store
    `BATCHPILOT_STORE` names; the caller closes it."""
    return opening.open_store(Path(state_dir))


@contextmanager
def store_at(state_dir: Path) -> Iterator[Store]:
    """The store of `state_dir`, closed however the block ends."""
    store = open_store(state_dir)
    try:
        yield store
    finally:
        store.close()


def run_lock(state_dir: Path, run_id: str) -> RunLock | RunLease:
    """What keeps a run to one process: a lock on a file beside the SQLite store, or a lease
    in the PostgreSQL store that processes on many machines share (`BATCHPILOT_PER_RUN` of
    them at once, 1 unless set)."""
    if opening.store_url() is not None:
        per_run = per_run_limit(os.environ.get(PER_RUN_ENV))
        return RunLease(run_id, state_dir=Path(state_dir), per_run=per_run)
    return RunLock(Path(state_dir) / "locks" / f"{run_id}.lock")


def run_files(state_dir: Path, run_id: str) -> Path:
    """Where a run keeps its batch files (caches the store can rebuild)."""
    return Path(state_dir) / "runs" / run_id / "files"


def find_run(store: Store, run_id: str | None) -> RunRecord:
    """A run by id, id prefix or job name, or the latest one (see `resolve_run`)."""
    return resolve_run(store, run_id)
