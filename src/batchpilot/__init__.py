"""batchpilot: run datasets through LLMs, planned, budgeted and crash-safe."""

from __future__ import annotations

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
from batchpilot.spec import JobSpec, job_from_dict, load_job
from batchpilot.task import Task, TaskReport, TaskRequest, TaskResult

__version__ = "0.1.0"

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
    "StateError",
    "Task",
    "TaskError",
    "TaskReport",
    "TaskRequest",
    "TaskResult",
    "UserInputError",
    "__version__",
    "job_from_dict",
    "load_job",
    "map",
    "plan_job",
    "plan_requests_file",
    "rows_from_dataframe",
    "rows_from_dataset",
    "rows_from_records",
]
