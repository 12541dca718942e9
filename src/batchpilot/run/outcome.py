"""Whether a run that ended did what it was asked: the verdict behind its exit code."""

from __future__ import annotations

from batchpilot.errors import RequestsFailed
from batchpilot.run.status import RunStatus
from batchpilot.spec import JobSpec

__all__ = ["failed_requests"]


def failed_requests(status: RunStatus, job: JobSpec | None) -> RequestsFailed | None:
    """The error to report when a finished run has requests that failed for good, else None.

    Failures a job provides for do not count: a `fallback` answers them, and a `target` that
    was met needed only the valid answers it has.
    """
    failed = status.requests.get("failed", 0)
    if not status.finished or not failed:
        return None
    if job is not None and job.fallback is not None:
        return None
    if status.target is not None and status.valid is not None and status.valid >= status.target:
        return None
    reasons = sorted(status.failures.items(), key=lambda item: (-item[1], item[0]))
    why = f" ({', '.join(f'{reason}: {count}' for reason, count in reasons)})" if reasons else ""
    return RequestsFailed(
        f"{failed} of {status.total} requests of run {status.run_id} failed{why}; "
        f"`batchpilot status {status.run_id}` shows why, and --allow-failures accepts them"
    )
