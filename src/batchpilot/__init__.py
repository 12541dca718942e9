"""batchpilot: run datasets through LLMs, planned, budgeted and crash-safe.

The public names below are imported on first use, so `import batchpilot` stays cheap: the
provider SDKs, the local server and the model runtime load only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchpilot.data import rows_from_dataframe, rows_from_dataset, rows_from_records
    from batchpilot.errors import (
        BatchpilotError,
        BudgetExceeded,
        ConfigError,
        IllegalTransition,
        MissingDependency,
        ProviderError,
        ProviderRejected,
        ProviderUnavailable,
        StateError,
        TaskError,
        UserInputError,
    )
    from batchpilot.mapping import map
    from batchpilot.plan import PlanResult, plan_job, plan_requests_file
    from batchpilot.pricing import PriceTable
    from batchpilot.report import write_report
    from batchpilot.run import (
        RunResult,
        RunStatus,
        cancel_run,
        export_results,
        results_frame,
        resume,
        run_job,
        status_of,
    )
    from batchpilot.spec import JobSpec, job_from_dict, load_job
    from batchpilot.task import Task, TaskReport, TaskRequest, TaskResult

__version__ = "0.1.0"

_WHERE: dict[str, str] = {
    "BatchpilotError": "batchpilot.errors",
    "BudgetExceeded": "batchpilot.errors",
    "ConfigError": "batchpilot.errors",
    "IllegalTransition": "batchpilot.errors",
    "MissingDependency": "batchpilot.errors",
    "ProviderError": "batchpilot.errors",
    "ProviderRejected": "batchpilot.errors",
    "ProviderUnavailable": "batchpilot.errors",
    "StateError": "batchpilot.errors",
    "TaskError": "batchpilot.errors",
    "UserInputError": "batchpilot.errors",
    "JobSpec": "batchpilot.spec",
    "job_from_dict": "batchpilot.spec",
    "load_job": "batchpilot.spec",
    "PlanResult": "batchpilot.plan",
    "plan_job": "batchpilot.plan",
    "plan_requests_file": "batchpilot.plan",
    "PriceTable": "batchpilot.pricing",
    "map": "batchpilot.mapping",
    "RunResult": "batchpilot.run",
    "RunStatus": "batchpilot.run",
    "cancel_run": "batchpilot.run",
    "export_results": "batchpilot.run",
    "results_frame": "batchpilot.run",
    "resume": "batchpilot.run",
    "run_job": "batchpilot.run",
    "status_of": "batchpilot.run",
    "write_report": "batchpilot.report",
    "Task": "batchpilot.task",
    "TaskReport": "batchpilot.task",
    "TaskRequest": "batchpilot.task",
    "TaskResult": "batchpilot.task",
    "rows_from_dataframe": "batchpilot.data",
    "rows_from_dataset": "batchpilot.data",
    "rows_from_records": "batchpilot.data",
}

__all__ = [
    "BatchpilotError",
    "BudgetExceeded",
    "ConfigError",
    "IllegalTransition",
    "JobSpec",
    "MissingDependency",
    "PlanResult",
    "PriceTable",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RunResult",
    "RunStatus",
    "StateError",
    "Task",
    "TaskError",
    "TaskReport",
    "TaskRequest",
    "TaskResult",
    "UserInputError",
    "__version__",
    "cancel_run",
    "export_results",
    "job_from_dict",
    "load_job",
    "map",
    "plan_job",
    "plan_requests_file",
    "results_frame",
    "resume",
    "rows_from_dataframe",
    "rows_from_dataset",
    "rows_from_records",
    "run_job",
    "status_of",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batchpilot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
