"""Running jobs, and looking after stored runs: the functions the CLI calls.

`run_job` runs a job to the finish (`run_requests_file` a batch JSONL file as it is);
`resume`, `status_of`, `cancel_run` and `export_results` take a stored run by id (the latest
by default) from a state directory.
"""

from __future__ import annotations

from batchpilot.export import export_rows, export_run
from batchpilot.run.api import resume, run_job, run_requests_file
from batchpilot.run.control import CancelReport, cancel_run
from batchpilot.run.exports import Exported, export_results
from batchpilot.run.one import RunResult
from batchpilot.run.progress import RunDetail, status_of
from batchpilot.run.status import RunStatus
from batchpilot.run.workspace import DEFAULT_STATE_DIR, find_run, open_store

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
    "resume",
    "run_job",
    "run_requests_file",
    "status_of",
]
