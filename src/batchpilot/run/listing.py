"""The runs of a state directory, and the batches a provider holds, with the runs they are for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpilot.errors import UserInputError
from batchpilot.providers import Provider
from batchpilot.run.control import provider_of
from batchpilot.run.lookup import updated_at
from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.workspace import has_store, store_at
from batchpilot.store import RunRecord

__all__ = ["ListedRun", "RemoteBatch", "list_remote", "list_runs"]


@dataclass(frozen=True)
class ListedRun:
    """A run of the state directory with its progress."""

    record: RunRecord
    status: RunStatus
    updated_at_utc: str

    def as_json(self) -> dict[str, Any]:
        run, status = self.record, self.status
        return {
            "id": run.id,
            "job": run.job_name,
            "provider": run.provider,
            "status": run.status,
            "created_at_utc": run.created_at_utc,
            "updated_at_utc": self.updated_at_utc,
            "total": status.total,
            "done": status.done,
            "finished": status.finished,
            "requests": status.requests,
            "spent_usd": status.spent_usd,
        }


@dataclass(frozen=True)
class RemoteBatch:
    """A batch the provider holds: `run` and `local_batch` are the run and batch of this store
    it belongs to, else what its tags say (`known` false), else None."""

    id: str
    status: str
    ended: int
    total: int
    run: str | None
    local_batch: str | None
    known: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "done": self.ended,
            "total": self.total,
            "run": self.run,
            "in_this_store": self.known,
            "local_batch": self.local_batch,
        }


def list_runs(state_dir: Path) -> list[ListedRun]:
    """Every run of `state_dir`, the latest first; none (and no store created) when it holds
    no store."""
    if not has_store(state_dir):
        return []
    with store_at(state_dir) as store:
        return [
            ListedRun(record, run_status(store, record.id), updated_at(store, record))
            for record in store.runs()
        ]


def list_remote(
    state_dir: Path, *, kind: str | None = None, base_url: str | None = None
) -> list[RemoteBatch]:
    """The provider's batches, each with the run it is for: the provider `kind` at `base_url`
    when either is given, else the one the latest run of `state_dir` ran on."""
    known: dict[str, tuple[str, int]] = {}
    latest: RunRecord | None = None
    if has_store(state_dir):
        with store_at(state_dir) as store:
            runs = store.runs()
            latest = runs[0] if runs else None
            known = {
                b.remote_id: (r.id, b.id) for r in runs for b in store.batches(r.id) if b.remote_id
            }
    client: Provider
    if base_url or kind:
        from batchpilot.providers.openai import openai_provider

        client = openai_provider(base_url=base_url, kind=kind or "openai")  # type: ignore[arg-type]
    elif latest is not None:
        client = provider_of(latest, state_dir)
    else:
        raise UserInputError("listing remote batches needs a run here, or a provider or base URL")
    listed: list[RemoteBatch] = []
    try:
        for batch in client.batches.find():
            owner = known.get(batch.id)
            tags = batch.tags
            tagged_batch = None if tags is None or tags.batch_id is None else str(tags.batch_id)
            listed.append(
                RemoteBatch(
                    id=batch.id,
                    status=batch.status.value,
                    ended=batch.completed + batch.failed,
                    total=batch.total,
                    run=owner[0] if owner else (tags.run_id if tags else None),
                    local_batch=str(owner[1]) if owner else tagged_batch,
                    known=owner is not None,
                )
            )
    finally:
        client.close()
    return listed
