"""What many workers and many runs share through a store: leases on runs, and one organisation's
limits per provider account and model.

A lease is a worker id and an expiry on a run; the worker renews it while it works, and a run
whose lease has run out (its worker died) is free for another worker to claim and adopt. An
organisation's limits are rows every run reserves from in a transaction: the enqueued tokens of
the provider's batch queue (each batch holds its input tokens while it is queued or live) and
the real-time requests and tokens per minute.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchpilot.store.records import RunKind, RunRecord
from batchpilot.store.states import BatchState, RunState

__all__ = [
    "CLAIMABLE_KINDS",
    "CLAIMABLE_STATES",
    "QUEUED_BATCHES",
    "RATE_WINDOW_S",
    "Claim",
    "OrgLimit",
    "rate_wait",
]

CLAIMABLE_STATES = (RunState.PLANNED, RunState.RUNNING)
"""Runs a worker takes up: never run yet, or left running (a crash, a worker that let go)."""
CLAIMABLE_KINDS = (RunKind.JOB,)
"""Runs a worker can drive from the store alone (a job recorded with its run)."""
QUEUED_BATCHES = (
    BatchState.PLANNED,
    BatchState.UPLOADING,
    BatchState.UPLOADED,
    BatchState.CREATING,
    BatchState.SUBMITTED,
)
"""Batches whose input tokens count against the provider's queue (or soon will)."""
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Claim:
    """A run leased to a worker; `previous` names the worker whose lease ran out, if one did."""

    run: RunRecord
    previous: str | None = None


@dataclass(frozen=True)
class OrgLimit:
    """One provider account's limits for one model (None: no limit), and the input tokens its
    queued and live batches hold now, across every run of the store."""

    account: str
    model: str
    queue_tokens: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    queued_tokens: int = 0


def rate_wait(
    spent: list[tuple[float, int]], tokens: int, rpm: int | None, tpm: int | None
) -> float:
    """Seconds until one more request of `tokens` fits the last minute's requests `spent` (each:
    seconds until it leaves the window, its tokens; oldest first) under `rpm` and `tpm`; 0 when
    it fits now. A request larger than `tpm` waits for an empty window only."""
    wait = 0.0
    if rpm is not None and len(spent) + 1 > rpm:
        wait = spent[len(spent) - max(rpm, 1)][0]
    if tpm is not None:
        over = sum(t for _, t in spent) + tokens - tpm
        for leaves, used in spent:
            if over <= 0:
                break
            over -= used
            wait = max(wait, leaves)
    return max(0.0, wait)
