"""What changed in a run between two looks at it, as one line per change: what a log or a CI
job shows of a run instead of redrawing a panel (a batch submitted, a batch's remote status, a
batch collected, the real-time lane starting or stopping, the phase, every tenth of the
requests done, the end)."""

from __future__ import annotations

from batchpilot.formatting import usd
from batchpilot.run.status import RunStatus
from batchpilot.store import BatchRecord, BatchState

__all__ = ["changes", "done_line"]

_WORDS = {"in_progress": "in progress"}


def done_line(status: RunStatus) -> str:
    """Requests done (answered in live batches included), failed, and money spent."""
    done = status.done + status.in_batches_done
    failed = status.requests.get("failed", 0)
    return f"{done:,}/{status.total:,} done, {failed:,} failed, {usd(status.spent_usd)} spent"


def _batch_changes(before: BatchRecord | None, after: BatchRecord) -> list[str]:
    name = f"batch {after.id}"
    if after.state == BatchState.ABANDONED:
        gone = before is None or before.state == BatchState.ABANDONED
        return [] if gone else [f"{name} dropped: it was never created"]
    lines: list[str] = []
    was_live = before is not None and before.state in (BatchState.SUBMITTED, BatchState.FINISHED)
    if after.state in (BatchState.SUBMITTED, BatchState.FINISHED) and not was_live:
        lines.append(f"{name} submitted: {after.requests:,} requests ({after.remote_id})")
    old_remote = None if before is None or not was_live else before.remote_status
    if after.remote_status and after.remote_status != old_remote:
        words = _WORDS.get(after.remote_status, after.remote_status)
        answered = after.completed + after.failed
        if after.remote_status in ("completed", "expired", "cancelled", "failed"):
            words += f": {answered:,} of {after.requests:,} answered, {after.failed:,} failed"
        lines.append(f"{name} {words}")
    if after.state == BatchState.FINISHED and (before is None or before.state != after.state):
        lines.append(f"{name} collected")
    return lines


def changes(before: RunStatus | None, after: RunStatus) -> list[str]:
    """The lines that tell what changed from `before` (None: nothing seen yet) to `after`."""
    if before is None or before.run_id != after.run_id:
        return [
            f"run {after.run_id}: {after.phase}, {done_line(after)}, "
            f"{sum(n for s, n in after.batches.items() if s != BatchState.ABANDONED)} batches"
        ]
    lines: list[str] = []
    seen = {b.id: b for b in before.batch_records}
    for batch in after.batch_records:
        lines.extend(_batch_changes(seen.get(batch.id), batch))
    if after.realtime_lane != before.realtime_lane:
        lines.append("real-time lane " + ("started" if after.realtime_lane else "stopped"))
    if after.status != "running":
        if before.status == "running":
            lines.append(f"{after.status}: {done_line(after)}")
        return lines
    if after.finished:
        return lines  # the next look is the end
    if after.phase != before.phase:
        lines.append(f"phase: {after.phase}")
    if after.total:
        tenth = (after.done + after.in_batches_done) * 10 // after.total
        if tenth > (before.done + before.in_batches_done) * 10 // after.total:
            lines.append(f"{tenth * 10}% of the requests done: {done_line(after)}")
    return lines
