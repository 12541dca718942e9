"""Running jobs: the batch lane, the runner, and the functions the CLI calls."""

from __future__ import annotations

from batchpilot.run.api import (
    DEFAULT_STATE_DIR,
    RunResult,
    export_rows,
    export_run,
    find_run,
    open_store,
    run_job,
    run_requests_file,
    status_of,
)
from batchpilot.run.status import RunStatus

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
