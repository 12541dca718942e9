"""What a store may take as its own at the provider, and taking it.

Every remote object carries the store's own id, the run id and the local batch id (the name of
its lines, the batch's tags). The run id alone is no proof: the same job run from another state
directory has the same run id. Staged lines are this store's when their name (which holds the
store's id) and size match the batch's; a batch when its tags name this store, run and batch,
and it was made from the batch's staged lines.
"""

from __future__ import annotations

from batchpilot.providers.base import BatchTags, Provider, RemoteBatch
from batchpilot.store import BatchRecord, BatchState, Store, utc_now

__all__ = ["find_batch", "find_upload", "owns", "record_submitted", "tags_for"]


def tags_for(batch: BatchRecord, store_id: str) -> BatchTags:
    """The tags of a remote batch (and of its lines): which store, run and local batch it was
    made for, and the name of its lines."""
    return BatchTags(batch.run_id, batch.id, store_id, name=batch.file_name)


def owns(remote: RemoteBatch, batch: BatchRecord, run_id: str, store_id: str) -> bool:
    """Proof that `remote` was made by the store `store_id` for `batch` of `run_id`: its tags
    name them (a batch made before stores had ids names no store: the lines it was made from
    must then be the batch's), and it was made from the batch's staged lines."""
    tags = remote.tags
    if tags is None or tags.run_id != run_id or tags.batch_id != batch.id:
        return False
    if tags.store_id is not None and tags.store_id != store_id:
        return False
    if remote.staged and batch.input_file_id:
        return remote.staged == batch.input_file_id
    return tags.store_id is not None


def find_batch(
    provider: Provider, batch: BatchRecord, run_id: str, store_id: str
) -> RemoteBatch | None:
    """The provider's batch that the store made for `batch`, if it lists one."""
    listed = provider.batches.find(run_id)
    return next((b for b in listed if owns(b, batch, run_id, store_id)), None)


def find_upload(provider: Provider, batch: BatchRecord, store_id: str) -> str | None:
    """The handle of `batch`'s lines staged at the provider by an earlier try, if it has them:
    their name carries the store's id, and their size proves the content is the batch's."""
    return provider.batches.find_staged(tags_for(batch, store_id), batch.bytes)


def record_submitted(
    store: Store, run_id: str, batch: BatchRecord, remote: RemoteBatch
) -> BatchRecord:
    """The batch exists remotely as `remote`: it is polled from now on."""
    store.event(run_id, "submitted", f"batch {batch.id} ({batch.requests} requests) is {remote.id}")
    return store.move_batch(
        run_id,
        batch.id,
        BatchState.SUBMITTED,
        remote_id=remote.id,
        remote_status=remote.status.value,
        completed=remote.completed,
        failed=remote.failed,
        submitted_at_utc=utc_now(),
    )
