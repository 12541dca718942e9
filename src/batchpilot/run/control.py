"""Looking after a stored run from outside it: the provider it ran on, and cancelling it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from batchpilot.errors import StateError
from batchpilot.providers import Provider, provider_for
from batchpilot.run.adopt import find_batch, record_submitted
from batchpilot.run.cancel import Cancelled, cancel_batches
from batchpilot.run.identity import job_of
from batchpilot.run.workspace import find_run, run_lock, store_at
from batchpilot.spec.model import ProviderSpec
from batchpilot.store import BatchState, RunRecord, RunState, Store

__all__ = ["CancelReport", "cancel_run", "provider_of"]


def provider_of(run: RunRecord, state_dir: Path) -> Provider:
    """The provider a stored run ran on, from what the run recorded (credentials come from
    the environment, as when it ran); the caller closes it."""
    job = job_of(run)
    if job is not None:
        return provider_for(job.provider, state_dir=state_dir)
    spec = json.loads(run.spec_json)
    if spec.get("provider") == "local":
        return provider_for(ProviderSpec(kind="local"), state_dir=state_dir)
    from batchpilot.providers.openai import openai_provider

    return openai_provider(base_url=spec.get("base_url"), kind=spec.get("provider", "openai"))


@dataclass(frozen=True)
class CancelReport:
    """What cancelling a run did to each of its live batches."""

    run_id: str
    batches: list[Cancelled]

    @property
    def cancelled(self) -> int:
        return sum(item.outcome == "cancelled" for item in self.batches)

    @property
    def failed(self) -> bool:
        """Some batch could not be cancelled now (the provider was unreachable): try again."""
        return any(item.outcome == "failed" for item in self.batches)


def cancel_run(state_dir: Path, run_id: str | None = None) -> CancelReport:
    """Cancel a run's live batches at the provider (the latest run's by default), whatever each
    one answers; answers already in are kept, and `resume` continues the run.

    A batch whose creation was under way is cancelled too when the provider shows it as the
    run's. The run must not be running: a running run cancels its own batches (Ctrl-C).
    """
    with store_at(state_dir) as store:
        record = find_run(store, run_id)
        with _lock_for_cancel(state_dir, record.id):
            done = _cancel_batches(store, record, state_dir)
    return CancelReport(record.id, done)


@contextmanager
def _lock_for_cancel(state_dir: Path, run_id: str) -> Iterator[None]:
    lock = run_lock(state_dir, run_id)
    try:
        lock.acquire()
    except StateError as exc:
        raise StateError(
            f"{exc}. A run that is running cancels its own batches: press Ctrl-C twice "
            "where it runs"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _cancel_batches(store: Store, record: RunRecord, state_dir: Path) -> list[Cancelled]:
    provider = provider_of(record, state_dir)
    try:
        for batch in store.batches(record.id, [BatchState.CREATING]):
            remote = find_batch(provider, batch, record.id, store.store_id)
            if remote is not None:
                record_submitted(store, record.id, batch, remote)
        live = store.batches(record.id, [BatchState.SUBMITTED])
        done = cancel_batches(store, provider, record.id, live, "on request")
    finally:
        provider.close()
    store.move_run(record.id, RunState.CANCELLED)
    count = sum(item.outcome == "cancelled" for item in done)
    store.event(record.id, "cancelled", f"cancelled {count} of {len(live)} remote batches")
    return done
