"""Running jobs, and looking after stored runs: the functions the CLI calls.

`run_job` runs a job to the finish (`run_requests_file` a batch JSONL file as it is);
`resume`, `status_of`, `cancel_run` and `export_results` take a stored run by id (the latest
by default) from a state directory.

The names below are imported on first use, so that the lanes (which use parts of this package)
can be imported first without a circular import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchpilot.export import export_rows, export_run
    from batchpilot.run.api import resume, run_job
    from batchpilot.run.control import CancelReport, cancel_run
    from batchpilot.run.exports import Exported, export_results, results_frame
    from batchpilot.run.one import RunResult
    from batchpilot.run.progress import RunDetail, status_of
    from batchpilot.run.requests_file import run_requests_file
    from batchpilot.run.status import RunStatus
    from batchpilot.run.workspace import DEFAULT_STATE_DIR, find_run, open_store

_WHERE: dict[str, str] = {
    "DEFAULT_STATE_DIR": "batchpilot.run.workspace",
    "CancelReport": "batchpilot.run.control",
    "Exported": "batchpilot.run.exports",
    "RunDetail": "batchpilot.run.progress",
    "RunResult": "batchpilot.run.one",
    "RunStatus": "batchpilot.run.status",
    "cancel_run": "batchpilot.run.control",
    "export_results": "batchpilot.run.exports",
    "export_rows": "batchpilot.export",
    "export_run": "batchpilot.export",
    "find_run": "batchpilot.run.workspace",
    "open_store": "batchpilot.run.workspace",
    "results_frame": "batchpilot.run.exports",
    "resume": "batchpilot.run.api",
    "run_job": "batchpilot.run.api",
    "run_requests_file": "batchpilot.run.requests_file",
    "status_of": "batchpilot.run.progress",
}

__all__ = [
    "DEFAULT_STATE_DIR",
    "CancelReport",
    "Exported",
    "RunDetail",
    "RunResult",
    "RunStatus",
    "cancel_run",
    "export_results",
    "export_rows",
    "export_run",
    "find_run",
    "open_store",
    "results_frame",
    "resume",
    "run_job",
    "run_requests_file",
    "status_of",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batchpilot.run' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
