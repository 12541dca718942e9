"""Running jobs: the run loop and the functions the CLI calls.

The names below are imported on first use, so that the lanes (which use parts of this package)
can be imported first without a circular import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'batchpilot.run' has no attribute {name!r}")
    module = "batchpilot.run.status" if name == "RunStatus" else "batchpilot.run.api"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
