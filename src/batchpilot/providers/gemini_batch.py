"""The batch API over Gemini's Batch Mode: a batch's requests go inline when they are small and
in an uploaded JSONL file of `key` + `request` lines when they are not; the answers come back
inline or as a file, written here as our answer and error lines.

A Gemini batch has no metadata, so our tags are its display name (`batchpilot:<store>:<batch>:
<run>`), read back from the listing after a crash. An uploaded file's display name is the name
of the batch's lines and their size in bytes, the proof that the upload is the batch's, whole.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from google import genai
from google.genai import types

from batchpilot.answers import object_of, token_count
from batchpilot.jsontext import loads
from batchpilot.providers.base import BatchTags, Lines, RemoteBatch, RemoteStatus, Sink
from batchpilot.providers.gemini_errors import edge
from batchpilot.providers.gemini_shapes import (
    CHAT,
    GRPC_STATUS,
    chat_completion,
    request_parts,
    rest_request,
)
from batchpilot.providers.result_files import deliver_results

__all__ = ["INLINE_LIMIT", "GeminiBatches", "display_name", "tags_of"]

INLINE_LIMIT = 10 * 1024 * 1024
"""Requests of a batch larger than this (bytes of JSON) go in a file; Gemini takes 20 MB inline."""

_PREFIX = "batchpilot"
_STATES = {
    "JOB_STATE_QUEUED": RemoteStatus.VALIDATING,
    "JOB_STATE_PENDING": RemoteStatus.VALIDATING,
    "JOB_STATE_RUNNING": RemoteStatus.IN_PROGRESS,
    "JOB_STATE_UPDATING": RemoteStatus.IN_PROGRESS,
    "JOB_STATE_PAUSED": RemoteStatus.IN_PROGRESS,
    "JOB_STATE_SUCCEEDED": RemoteStatus.COMPLETED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": RemoteStatus.COMPLETED,
    "JOB_STATE_FAILED": RemoteStatus.FAILED,
    "JOB_STATE_CANCELLING": RemoteStatus.CANCELLING,
    "JOB_STATE_CANCELLED": RemoteStatus.CANCELLED,
    "JOB_STATE_EXPIRED": RemoteStatus.EXPIRED,
}


def display_name(tags: BatchTags) -> str:
    """The tags as a batch's display name."""
    batch = "-" if tags.batch_id is None else str(tags.batch_id)
    return f"{_PREFIX}:{tags.store_id or '-'}:{batch}:{tags.run_id}"


def tags_of(name: str | None) -> BatchTags | None:
    """Our tags in a batch's display name; None on a batch that does not carry them."""
    parts = (name or "").split(":", 3)
    if len(parts) != 4 or parts[0] != _PREFIX or not parts[3]:
        return None
    _, store, batch, run = parts
    number = int(batch) if batch.isdecimal() and str(int(batch)) == batch else None
    return BatchTags(run, number, None if store == "-" else store)


def _file_name(tags: BatchTags, size: int) -> str:
    name = tags.name or f"batchpilot-{tags.store_id}-{tags.run_id}-{tags.batch_id}.jsonl"
    return f"{name}#{size}"


def _lines(lines: Lines) -> Iterator[dict[str, Any]]:
    if isinstance(lines, Path):
        with lines.open("rb") as handle:
            yield from (json.loads(line) for line in handle if line.strip())
    else:
        yield from (json.loads(line) for line in lines)


def _size(lines: Lines) -> int:
    if isinstance(lines, Path):
        return lines.stat().st_size
    return sum(len(line) + 1 for line in lines)


class GeminiBatches:
    """The BatchAPI over a `genai.Client`; `inline_limit` is the size up to which a batch's
    requests go inline."""

    def __init__(self, client: genai.Client, *, secret: str | None, inline_limit: int) -> None:
        self._client = client
        self._secret = secret
        self._inline_limit = inline_limit

    def stage(self, lines: Lines, tags: BatchTags) -> str | None:
        if not isinstance(lines, Path):
            lines = list(lines)
        name = _file_name(tags, _size(lines))
        with tempfile.TemporaryFile() as spool:
            for line in _lines(lines):
                request = rest_request(line["body"], line.get("url") or CHAT)
                spool.write(json.dumps({"key": line["custom_id"], "request": request}).encode())
                spool.write(b"\n")
            if spool.tell() <= self._inline_limit:
                return None
            spool.seek(0)
            config = types.UploadFileConfig(display_name=name, mime_type="application/jsonl")
            with edge(f"uploading {name}", self._secret):
                uploaded = self._client.files.upload(file=spool, config=config)
        return uploaded.name

    def find_staged(self, tags: BatchTags, size: int) -> str | None:
        name = _file_name(tags, size)
        with edge("listing files", self._secret):
            for item in self._client.files.list(config={"page_size": 100}):
                if item.display_name == name:
                    return item.name
        return None

    def submit(
        self, lines: Lines, endpoint: str, tags: BatchTags, *, staged: str | None = None
    ) -> RemoteBatch:
        model: str | None = None
        src: Any = staged
        if staged is None:
            src = []
            for line in _lines(lines):
                contents, generation = request_parts(line["body"], line.get("url") or endpoint)
                model = model or line["body"].get("model")
                item = {"contents": contents, "metadata": {"key": line["custom_id"]}}
                src.append({**item, "config": generation} if generation else item)
        else:
            model = next((line["body"].get("model") for line in _lines(lines)), None)
        # Never retried inside the SDK: a create whose answer was lost may have made the batch.
        config = types.CreateBatchJobConfig(
            display_name=display_name(tags),
            http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),
        )
        with edge(f"creating batch {display_name(tags)}", self._secret):
            job = self._client.batches.create(model=str(model), src=src, config=config)
        return _remote(job, staged)

    def poll(self, remote_id: str) -> RemoteBatch:
        with edge(f"reading batch {remote_id}", self._secret):
            return _remote(self._client.batches.get(name=_named(remote_id)))

    def cancel(self, remote_id: str) -> RemoteBatch:
        with edge(f"cancelling batch {remote_id}", self._secret):
            self._client.batches.cancel(name=_named(remote_id))
        remote = self.poll(remote_id)
        # Gemini has no cancelling state: a batch being cancelled still says it is running
        if remote.status.terminal:
            return remote
        return dataclasses.replace(remote, status=RemoteStatus.CANCELLING)

    def find(self, run_id: str | None = None) -> Iterator[RemoteBatch]:
        with edge("listing batches", self._secret):
            for job in self._client.batches.list(config={"page_size": 100}):
                remote = _remote(job)
                if run_id is None or (remote.tags is not None and remote.tags.run_id == run_id):
                    yield remote

    # results ----------------------------------------------------------------------------------

    def results(self, remote: RemoteBatch, into: Sink) -> list[Path]:
        lines = self._result_lines(remote)
        return deliver_results(lines, into, _bare(remote.id), remote.completed)

    def _result_lines(self, remote: RemoteBatch) -> Iterator[tuple[bool, dict[str, Any]]]:
        with edge(f"reading batch {remote.id}", self._secret):
            job = self._client.batches.get(name=_named(remote.id))
        status = _remote(job).status
        dest = job.dest
        if dest is not None and dest.inlined_responses is not None:
            for item in dest.inlined_responses:
                key = (item.metadata or {}).get("key")
                response = (
                    item.response.model_dump(mode="json", exclude_none=True)
                    if item.response
                    else None
                )
                error = (
                    item.error.model_dump(mode="json", exclude_none=True) if item.error else None
                )
                yield result_line(key, response, error, status, job.model)
        elif dest is not None and dest.file_name:
            for line in self._download(dest.file_name):
                yield result_line(
                    line.get("key"), line.get("response"), line.get("error"), status, job.model
                )

    def _download(self, name: str) -> Iterable[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as directory:
            target = Path(directory) / "responses.jsonl"
            with edge(f"downloading {name}", self._secret):
                self._client.files.download(file=name, config=None, destination=str(target))
            with target.open("rb") as handle:
                for raw in handle:
                    if raw.strip():
                        try:
                            line = loads(raw)
                        except ValueError:  # not JSON, not UTF-8, or nested too deeply
                            continue  # a line the provider garbled: its request is retried
                        yield object_of(line)


def result_line(
    key: Any,
    response: Any,
    error: Any,
    status: RemoteStatus,
    model: str | None,
) -> tuple[bool, dict[str, Any]]:
    """One request's outcome in our result shape, and whether it is an answer (True) or an
    error line; a request a cancelled or expired batch never ran says so."""
    custom_id = None if key is None else str(key)
    if response is not None and error is None:
        body = chat_completion(response, (model or "").removeprefix("models/") or None)
        return True, {
            "custom_id": custom_id,
            "response": {"status_code": 200, "body": body},
            "error": None,
        }
    error = object_of(error)
    code = token_count(error.get("code")) or 2
    message = str(error.get("message") or "The request failed.")
    unrun = {
        (1, RemoteStatus.CANCELLED): "batch_cancelled",
        (1, RemoteStatus.CANCELLING): "batch_cancelled",
        (4, RemoteStatus.EXPIRED): "batch_expired",
    }.get((code, status))
    if unrun is not None:
        return False, {
            "custom_id": custom_id,
            "response": None,
            "error": {"code": unrun, "message": message},
        }
    http = GRPC_STATUS.get(code, 500)
    body = {"error": {"code": code, "message": message}}
    return False, {
        "custom_id": custom_id,
        "response": {"status_code": http, "body": body},
        "error": None,
    }


def _named(remote_id: str) -> str:
    """A batch's name (`batches/<id>`), as the SDK takes it, for an id with or without it."""
    return remote_id if remote_id.startswith("batches/") else f"batches/{remote_id}"


def _bare(name: str) -> str:
    return name.removeprefix("batches/")


def _failure(responses: list[types.InlinedResponse]) -> list[dict[str, Any]]:
    """Why a batch failed as a whole, from its requests' errors: all refused as
    RESOURCE_EXHAUSTED is a full queue (the batch lane then waits for room, untried)."""
    codes = {r.error.code for r in responses if r.error is not None}
    if codes != {8}:
        return []
    message = next((r.error.message for r in responses if r.error is not None), None)
    return [{"code": "token_limit_exceeded", "message": message or "the batch queue is full"}]


def _remote(job: types.BatchJob, staged: str | None = None) -> RemoteBatch:
    state = job.state.value if job.state is not None else "JOB_STATE_PENDING"
    status = _STATES.get(state, RemoteStatus.IN_PROGRESS)
    completed = failed = total = 0
    result: str | None = None
    errors: list[dict[str, Any]] = []
    if job.error is not None:
        errors.append({"code": job.error.code, "message": job.error.message})
    if job.dest is not None and job.dest.inlined_responses is not None:
        total = len(job.dest.inlined_responses)
        completed = sum(1 for r in job.dest.inlined_responses if r.error is None and r.response)
        failed = total - completed
        if status is RemoteStatus.FAILED:
            errors += _failure(job.dest.inlined_responses)
    elif job.dest is not None:
        result = job.dest.file_name
    created = job.create_time.timestamp() if job.create_time is not None else 0.0
    return RemoteBatch(
        id=str(job.name),
        status=status,
        endpoint=CHAT,
        tags=tags_of(job.display_name),
        staged=staged,
        result_ids=(result, None),
        created_at=int(created),
        total=total,
        completed=completed,
        failed=failed,
        errors=errors,
        model=(job.model or "").removeprefix("models/") or None,
    )
