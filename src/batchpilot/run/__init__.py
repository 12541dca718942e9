"""Running jobs: the batch lane, the runner, and the functions the CLI calls."""

from __future__ import annotations

from batchpilot.export import export_rows, export_run
from batchpilot.run.api import run_job, run_requests_file, status_of
from batchpilot.run.one import RunResult
from batchpilot.run.status import RunStatus
from batchpilot.run.workspace import DEFAULT_STATE_DIR, find_run, open_store

__all__ = [
    "DEFAULT_STATE_DIR",
    "RunResult",
    "RunStatus",
    "export_rows",
    "export_run",
    "find_run",
    "open_store",
    "run_job",
    "run_requests_file",
    "status_of",
]
