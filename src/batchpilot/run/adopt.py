"""What a store may take as its own at the provider, and taking it.

Every remote object carries the store's own id, the run id and the local batch id (file name,
batch metadata). The run id alone is no proof: the same job run from another state directory
has the same run id. A file is this store's when its name (which holds the store's id) and its
size match the batch's; a batch when its tags name this store, run and batch, and it was made
from the batch's input file.
"""

from __future__ import annotations

from batchpilot.providers.base import Provider, RemoteBatch, RemoteFile
from batchpilot.store import BatchRecord, BatchState, Store, utc_now

__all__ = ["find_batch", "find_file", "metadata_for", "owns", "record_submitted"]


def metadata_for(run_id: str, batch_id: int, store_id: str) -> dict[str, str]:
    """The tags of a remote batch: which store, run and local batch it was made for."""
    return {
        "batchpilot_store": store_id,
        "batchpilot_run": run_id,
        "batchpilot_batch": str(batch_id),
    }


def owns(remote: RemoteBatch, batch: BatchRecord, run_id: str, store_id: str) -> bool:
    """Proof that `remote` was made by the store `store_id` for `batch` of `run_id`: its tags
    name them (a batch made before stores had ids names no store: its input file must then be
    the batch's), and it was made from the batch's input file."""
    tags = remote.metadata
    if tags.get("batchpilot_run") != run_id or tags.get("batchpilot_batch") != str(batch.id):
        return False
    store = tags.get("batchpilot_store")
    if store is not None and store != store_id:
        return False
    if remote.input_file_id and batch.input_file_id:
        return remote.input_file_id == batch.input_file_id
    return store is not None


def find_batch(
    provider: Provider, batch: BatchRecord, run_id: str, store_id: str
) -> RemoteBatch | None:
    """The provider's batch that the store made for `batch`, if it lists one."""
    return next((b for b in provider.list_batches() if owns(b, batch, run_id, store_id)), None)


def find_file(provider: Provider, batch: BatchRecord) -> RemoteFile | None:
    """The provider's file that holds `batch`'s input, if it lists one: the name carries the
    store's id, and the size proves the content is the batch's."""
    return next(
        (
            f
            for f in provider.list_files()
            if f.filename == batch.file_name and f.bytes == batch.bytes
        ),
        None,
    )


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
        submitted_at_utc=utc_now(),
    )
