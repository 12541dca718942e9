"""The lanes: the batch lane (`lanes/batch.py`, imported by the run loop), and the real-time lane
and its client-side rate limits, exported here."""

from __future__ import annotations

from batchpilot.lanes.ratelimit import RateLimits, Throttle, TooLarge, parse_duration, retry_after
from batchpilot.lanes.realtime import LaneReport, RealtimeLane, recover_inflight

__all__ = [
    "LaneReport",
    "RateLimits",
    "RealtimeLane",
    "Throttle",
    "TooLarge",
    "parse_duration",
    "recover_inflight",
    "retry_after",
]
