"""The store: the single source of truth of every run (`Store`; SQLite is the first kind)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchpilot.store.base import Store
from batchpilot.store.lock import RunLock
from batchpilot.store.records import (
    BatchRecord,
    DeliveryRow,
    JoinedRow,
    NewRequest,
    NewRow,
    Outcome,
    PendingRequest,
    RunKind,
    RunRecord,
    TaskStateRecord,
)
from batchpilot.store.sqlite import SQLiteStore, utc_now
from batchpilot.store.states import BatchState, RequestState, RunState

__all__ = [
    "BatchRecord",
    "BatchState",
    "DeliveryRow",
    "JoinedRow",
    "NewRequest",
    "NewRow",
    "Outcome",
    "PendingRequest",
    "RequestState",
    "RunKind",
    "RunLock",
    "RunRecord",
    "RunState",
    "SQLiteStore",
    "Store",
    "TaskStateRecord",
    "utc_now",
]

if TYPE_CHECKING:
    from pathlib import Path

    from batchpilot.store.postgres import PostgresStore

    def _conforms(path: Path) -> Store:
        return SQLiteStore(path)  # mypy proves that SQLiteStore offers the whole Store surface

    def _conforms_too(url: str) -> Store:
        return PostgresStore(url)  # and that PostgresStore does
