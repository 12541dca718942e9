"""The store: SQLite, the single source of truth of every run."""

from __future__ import annotations

from batchpilot.store.lock import RunLock
from batchpilot.store.records import (
    BatchRecord,
    Outcome,
    PendingRequest,
    RunRecord,
    TaskStateRecord,
)
from batchpilot.store.sqlite import SQLiteStore, utc_now
from batchpilot.store.states import BatchState, RequestState

__all__ = [
    "BatchRecord",
    "BatchState",
    "Outcome",
    "PendingRequest",
    "RequestState",
    "RunLock",
    "RunRecord",
    "SQLiteStore",
    "TaskStateRecord",
    "utc_now",
]
