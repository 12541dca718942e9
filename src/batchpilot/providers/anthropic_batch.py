"""The batch API over Anthropic's Message Batches: request lines go inline (nothing is staged),
results come back as one JSONL stream, written here as our answer and error lines.

A message batch has no metadata, so our tags live in a local record beside the job's state: an
intent (the tags and the number of requests) is written before the create call, and the batch's
id after it. A batch whose create answer was lost is recognised in the listing as the only
unrecorded batch with that many requests created after the intent, and recorded then.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
from anthropic.types.messages import MessageBatch

from batchpilot.jsontext import loads
from batchpilot.providers.anthropic_errors import edge
from batchpilot.providers.anthropic_shapes import MESSAGES, messages_params, result_line
from batchpilot.providers.base import BatchTags, Lines, RemoteBatch, RemoteStatus, Sink
from batchpilot.providers.result_files import deliver_results

__all__ = ["AnthropicBatches", "BatchRecord"]

_SLACK_S = 300.0  # clocks of this machine and the provider may differ this much


class BatchRecord:
    """Which of the provider's batches are ours, with their tags and endpoint: a JSONL file
    (one entry per line, appended and flushed to disk), or memory alone without a path."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        if path is not None and path.is_file():
            for raw in path.read_text(encoding="utf-8").splitlines():
                try:
                    self._entries.append(json.loads(raw))
                except ValueError:
                    continue  # a line cut short by a crash

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)
            if self._path is None:
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
                out.flush()
                os.fsync(out.fileno())

    def known(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {e["id"]: e for e in self._entries if "id" in e}

    def open_intents(self) -> list[dict[str, Any]]:
        with self._lock:
            made = {e["name"] for e in self._entries if "id" in e}
            return [e for e in self._entries if "intent" in e and e["name"] not in made]


def _tags(entry: dict[str, Any]) -> BatchTags:
    return BatchTags(entry["run_id"], entry.get("batch_id"), entry.get("store_id"))


def _name(tags: BatchTags) -> str:
    return tags.name or f"batchpilot-{tags.store_id}-{tags.run_id}-{tags.batch_id}"


def _lines(lines: Lines) -> Iterator[bytes]:
    if isinstance(lines, Path):
        with lines.open("rb") as handle:
            yield from (line for line in handle if line.strip())
    else:
        yield from lines


class AnthropicBatches:
    """The BatchAPI over an `anthropic.Anthropic` client; `record` keeps our tags."""

    def __init__(self, client: anthropic.Anthropic, record: BatchRecord) -> None:
        self._client = client
        self._record = record

    @property
    def _secret(self) -> str | None:
        return self._client.api_key

    def stage(self, lines: Lines, tags: BatchTags) -> None:
        return None

    def find_staged(self, tags: BatchTags, size: int) -> None:
        return None

    def submit(
        self, lines: Lines, endpoint: str, tags: BatchTags, *, staged: str | None = None
    ) -> RemoteBatch:
        requests = []
        for raw in _lines(lines):
            line = json.loads(raw)
            body = messages_params(line["body"], line.get("url") or endpoint)
            requests.append({"custom_id": line["custom_id"], "params": body})
        name = _name(tags)
        entry = {
            "name": name,
            "run_id": tags.run_id,
            "batch_id": tags.batch_id,
            "store_id": tags.store_id,
            "endpoint": endpoint,
        }
        self._record.add({**entry, "intent": True, "count": len(requests), "at": time.time()})
        # Never retried inside the SDK: a create whose answer was lost may have made the batch.
        with edge(f"creating message batch {name}", self._secret):
            batch = self._client.with_options(max_retries=0).messages.batches.create(
                requests=requests  # type: ignore[arg-type]
            )
        self._record.add({**entry, "id": batch.id})
        return self._remote(batch, {**entry, "id": batch.id})

    def poll(self, remote_id: str) -> RemoteBatch:
        with edge(f"reading message batch {remote_id}", self._secret):
            batch = self._client.messages.batches.retrieve(remote_id)
        return self._remote(batch, self._record.known().get(remote_id))

    def results(self, remote: RemoteBatch, into: Sink) -> list[Path]:
        endpoint = remote.endpoint or MESSAGES
        lines = (
            (False, item) if isinstance(item, bytes) else result_line(item, endpoint)
            for item in self._stream(remote.id)
        )
        return deliver_results(lines, into, remote.id, remote.completed)

    def _stream(self, remote_id: str) -> Iterator[Any]:
        """Each line of the results: what it holds, or, for a line that is not JSON (cut short
        or garbled on the way), its bytes as they came, passed on to be read as such (the SDK's
        own reader would stop at it, and the batch could never be read)."""
        with (
            edge(f"downloading the results of message batch {remote_id}", self._secret),
            self._client.messages.batches.with_streaming_response.results(remote_id) as response,
        ):
            rest = b""
            for chunk in response.iter_bytes():
                *whole, rest = (rest + chunk).split(b"\n")
                yield from _read(whole)
            yield from _read([rest])

    def cancel(self, remote_id: str) -> RemoteBatch:
        with edge(f"cancelling message batch {remote_id}", self._secret):
            batch = self._client.messages.batches.cancel(remote_id)
        return self._remote(batch, self._record.known().get(remote_id))

    def find(self, run_id: str | None = None) -> Iterator[RemoteBatch]:
        known = self._record.known()
        intents = self._record.open_intents()
        with edge("listing message batches", self._secret):
            for batch in self._client.messages.batches.list(limit=100):
                entry = known.get(batch.id) or self._adopt(batch, intents)
                remote = self._remote(batch, entry)
                if run_id is None or (remote.tags is not None and remote.tags.run_id == run_id):
                    yield remote

    def _adopt(self, batch: MessageBatch, intents: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The open intent an unrecorded batch was made for, recorded now; None if none fits."""
        total = sum(batch.request_counts.model_dump().values())
        created = batch.created_at.timestamp()
        fits = [i for i in intents if i["count"] == total and created >= i["at"] - _SLACK_S]
        if not fits:
            return None
        intent = max(fits, key=lambda i: float(i["at"]))
        intents.remove(intent)
        entry = {k: v for k, v in intent.items() if k not in ("intent", "count", "at")}
        entry["id"] = batch.id
        self._record.add(entry)
        return entry

    def _remote(self, batch: MessageBatch, entry: dict[str, Any] | None) -> RemoteBatch:
        counts = batch.request_counts
        status = {
            "in_progress": RemoteStatus.IN_PROGRESS,
            "canceling": RemoteStatus.CANCELLING,
        }.get(batch.processing_status)
        if status is None:
            if batch.cancel_initiated_at is not None:
                status = RemoteStatus.CANCELLED
            elif counts.expired:
                status = RemoteStatus.EXPIRED
            else:
                status = RemoteStatus.COMPLETED
        total = counts.processing + counts.succeeded + counts.errored
        total += counts.canceled + counts.expired
        return RemoteBatch(
            id=batch.id,
            status=status,
            endpoint=(entry or {}).get("endpoint") or MESSAGES,
            tags=_tags(entry) if entry is not None else None,
            result_ids=(batch.results_url, None),
            created_at=int(batch.created_at.timestamp()),
            total=total,
            completed=counts.succeeded,
            failed=counts.errored + counts.canceled + counts.expired,
        )


def _read(lines: list[bytes]) -> Iterator[Any]:
    for raw in lines:
        if raw.strip():
            try:
                yield loads(raw)
            except ValueError:  # not JSON, not UTF-8, or nested too deeply
                yield raw.strip()
