"""Tasks: batch jobs driven by code, with results handed to a callback and state kept safe.

See `Task` and docs/tasks.md.
"""

from __future__ import annotations

from batchpilot.task.base import Task
from batchpilot.task.records import TaskReport, TaskRequest, TaskResult

__all__ = ["Task", "TaskReport", "TaskRequest", "TaskResult"]
