"""The batch API over OpenAI's Files and Batches APIs (OpenAI, Azure OpenAI, compatible servers).

Request lines are uploaded as a file (named after the batch, so that a crash between upload
and creation finds it again), and our tags go into the batch's metadata. Batch creation is not
retried by the SDK (it is not idempotent): the lane retries it after looking for it by tags.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import openai
from openai.types import Batch

from batchpilot.providers.base import BatchTags, Lines, RemoteBatch, RemoteStatus, Sink
from batchpilot.providers.openai_errors import edge

__all__ = ["OpenAIBatches", "file_name", "metadata", "tags_of"]

log = logging.getLogger(__name__)

_STATUSES: dict[str, RemoteStatus] = {status.value: status for status in RemoteStatus}
_CHUNK = 1024 * 1024
_SPOOL = 8 * 1024 * 1024  # lines given one by one are kept in memory up to this size


def file_name(tags: BatchTags) -> str:
    """The name an upload of the batch's lines carries: the tags' name, or one built from
    them."""
    return tags.name or f"batchpilot-{tags.store_id}-{tags.run_id}-{tags.batch_id}.jsonl"


def metadata(tags: BatchTags) -> dict[str, str]:
    """The tags as batch metadata."""
    found = {"batchpilot_run": tags.run_id}
    if tags.batch_id is not None:
        found["batchpilot_batch"] = str(tags.batch_id)
    if tags.store_id is not None:
        found["batchpilot_store"] = tags.store_id
    return found


def tags_of(data: dict[str, str] | None) -> BatchTags | None:
    """Our tags in a batch's metadata; None on a batch that does not carry them."""
    data = data or {}
    run, batch = data.get("batchpilot_run"), data.get("batchpilot_batch") or ""
    if run is None:
        return None
    number = int(batch) if batch.isdecimal() and str(int(batch)) == batch else None
    return BatchTags(run, number, data.get("batchpilot_store"))


class OpenAIBatches:
    """The BatchAPI over an `openai.OpenAI` (or `AzureOpenAI`) client."""

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client

    @property
    def _secret(self) -> str | None:
        return self._client.api_key

    def stage(self, lines: Lines, tags: BatchTags) -> str:
        name = file_name(tags)
        if isinstance(lines, Path):
            with lines.open("rb") as handle:
                return self._upload(handle, name, f"uploading {lines} as {name}")
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as spool:
            for line in lines:
                spool.write(line)
                spool.write(b"\n")
            spool.seek(0)
            return self._upload(spool, name, f"uploading {name}")

    def _upload(self, handle: IO[bytes], name: str, what: str) -> str:
        with edge(what, self._secret):
            return self._client.files.create(file=(name, handle), purpose="batch").id

    def find_staged(self, tags: BatchTags, size: int) -> str | None:
        name = file_name(tags)
        with edge("listing batch files", self._secret):
            for item in self._client.files.list(purpose="batch", order="desc"):
                if item.filename == name and item.bytes == size:
                    return item.id
        return None

    def submit(
        self, lines: Lines, endpoint: str, tags: BatchTags, *, staged: str | None = None
    ) -> RemoteBatch:
        file_id = staged if staged is not None else self.stage(lines, tags)
        # Never retried inside the SDK: a create whose answer was lost may have created the
        # batch, and the SDK would blindly create a second one (paid twice).
        with edge(f"creating batch for file {file_id}", self._secret):
            batch = self._client.with_options(max_retries=0).batches.create(
                input_file_id=file_id,
                endpoint=cast(Any, endpoint),
                completion_window="24h",
                metadata=metadata(tags),
            )
        return remote_batch(batch)

    def poll(self, remote_id: str) -> RemoteBatch:
        with edge(f"reading batch {remote_id}", self._secret):
            return remote_batch(self._client.batches.retrieve(remote_id))

    def results(self, remote: RemoteBatch, into: Sink) -> list[Path]:
        saved = []
        for file_id, kind in zip(remote.result_ids, ("output", "errors"), strict=True):
            if file_id is None:
                continue
            if isinstance(into, Path):
                target = into / f"{remote.id}.{kind}.jsonl"
                if not target.is_file():
                    self._save(file_id, target)
                saved.append(target)
            else:
                self._each_line(file_id, into)
        return saved

    def _save(self, file_id: str, target: Path) -> None:
        part = target.with_suffix(target.suffix + ".part")
        try:
            with (
                edge(f"downloading file {file_id}", self._secret),
                self._client.files.with_streaming_response.content(file_id) as response,
                part.open("wb") as out,
            ):
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            part.replace(target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def _each_line(self, file_id: str, sink: Callable[[bytes], None]) -> None:
        with (
            edge(f"downloading file {file_id}", self._secret),
            self._client.files.with_streaming_response.content(file_id) as response,
        ):
            rest = b""
            for chunk in response.iter_bytes(_CHUNK):
                *whole, rest = (rest + chunk).split(b"\n")
                for line in whole:
                    if line.strip():
                        sink(line)
            if rest.strip():
                sink(rest)

    def cancel(self, remote_id: str) -> RemoteBatch:
        with edge(f"cancelling batch {remote_id}", self._secret, conflict_rejects=True):
            return remote_batch(self._client.batches.cancel(remote_id))

    def find(self, run_id: str | None = None) -> Iterator[RemoteBatch]:
        with edge("listing batches", self._secret):
            for batch in self._client.batches.list(limit=100):
                remote = remote_batch(batch)
                if run_id is None or (remote.tags is not None and remote.tags.run_id == run_id):
                    yield remote


def remote_batch(batch: Batch) -> RemoteBatch:
    status = _STATUSES.get(batch.status)
    if status is None:
        log.warning(
            "batch %s has the unknown status %r; treating it as in progress", batch.id, batch.status
        )
        status = RemoteStatus.IN_PROGRESS
    counts = batch.request_counts
    errors = batch.errors.data if batch.errors is not None and batch.errors.data else []
    return RemoteBatch(
        id=batch.id,
        status=status,
        endpoint=batch.endpoint,
        tags=tags_of(batch.metadata),
        staged=batch.input_file_id,
        result_ids=(batch.output_file_id, batch.error_file_id),
        created_at=batch.created_at,
        total=counts.total if counts is not None else 0,
        completed=counts.completed if counts is not None else 0,
        failed=counts.failed if counts is not None else 0,
        errors=[
            {"code": e.code, "message": e.message, "line": e.line, "param": e.param} for e in errors
        ],
        usage=batch.usage.model_dump() if batch.usage is not None else None,
        model=batch.model,
    )
