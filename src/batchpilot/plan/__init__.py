"""Planning: render, hash, count, price, pack and lint every request before any is sent."""

from __future__ import annotations

from batchpilot.plan.findings import Finding, Findings
from batchpilot.plan.job import plan_job, plan_requests_file
from batchpilot.plan.packing import BatchLimits, PackedBatch, Packer
from batchpilot.plan.planner import Item, PlannedRequest, Planner, PlanResult, PlanSettings
from batchpilot.plan.writer import BatchFileWriter

__all__ = [
    "BatchFileWriter",
    "BatchLimits",
    "Finding",
    "Findings",
    "Item",
    "PackedBatch",
    "Packer",
    "PlanResult",
    "PlanSettings",
    "PlannedRequest",
    "Planner",
    "plan_job",
    "plan_requests_file",
]
