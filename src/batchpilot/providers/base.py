"""What batchpilot needs from a provider: a batch API and, next to it, a real-time API.

Each implementation translates its provider's statuses and errors at this edge; SDK exceptions
never pass it. The batch API raises ours; the real-time API returns a CallFailed instead.

    ProviderError (batchpilot.errors)
    ├── ProviderUnavailable   connection failures, timeouts, 5xx, 429 after the SDK's retries
    └── ProviderRejected      4xx: the request itself is wrong
        ├── RemoteNotFound    404 (an object that does not exist, or not yet)
        └── AuthenticationFailed  401/403: the key (or its permissions), not the request
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from batchpilot.errors import ProviderRejected

__all__ = [
    "FLEX",
    "STANDARD",
    "Answer",
    "AuthenticationFailed",
    "BatchAPI",
    "BatchTags",
    "CallFailed",
    "Capabilities",
    "Lines",
    "Provider",
    "RealtimeAPI",
    "RemoteBatch",
    "RemoteNotFound",
    "RemoteStatus",
    "Sink",
]

STANDARD = "standard"
FLEX = "flex"
"""The real-time API's service tiers: `flex` answers at batch prices, slower, and sometimes not
at all (429 `resource_unavailable`)."""


class RemoteStatus(StrEnum):
    """A remote batch's status, in our words."""

    VALIDATING = "validating"  # accepted, input being checked
    IN_PROGRESS = "in_progress"  # requests running
    FINALIZING = "finalizing"  # all requests done, result files being written
    COMPLETED = "completed"  # result files ready (failures may hide inside)
    FAILED = "failed"  # rejected as a whole (validation, queue limit); nothing ran
    EXPIRED = "expired"  # the window passed; partial results kept
    CANCELLING = "cancelling"  # cancel requested
    CANCELLED = "cancelled"  # cancelled; partial results kept

    @property
    def terminal(self) -> bool:
        return self in (self.COMPLETED, self.FAILED, self.EXPIRED, self.CANCELLED)


class RemoteNotFound(ProviderRejected):
    """The provider has no such object (or, right after creating it, not yet)."""


class AuthenticationFailed(ProviderRejected):
    """The provider refused the credentials (401) or their permissions (403).

    Nothing is wrong with the request itself: every other request would be refused alike, so a
    run stops instead of failing its requests for good.
    """


@dataclass(frozen=True)
class BatchTags:
    """What a remote batch carries so that the store that made it can find it again: the run
    id, the local batch id (None on a remote batch whose tags name none), the store's id (None
    on batches made before stores had ids), and `name`, the name its request lines are known by
    (a file name at file-based providers; it holds the store's id)."""

    run_id: str
    batch_id: int | None
    store_id: str | None
    name: str = ""


@dataclass(frozen=True)
class RemoteBatch:
    """A provider's batch, in our words. `staged` is the opaque handle of the lines it was made
    from (None where requests go inline); `result_ids` the opaque handles of its answers and
    errors, kept by the store for the record; `tags` are ours, None on a batch we did not make."""

    id: str
    status: RemoteStatus
    endpoint: str
    tags: BatchTags | None = None
    staged: str | None = None
    result_ids: tuple[str | None, str | None] = (None, None)
    created_at: int = 0
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    model: str | None = None


Lines = Path | Iterable[bytes]
"""Request lines in our JSONL shape (`custom_id`, `method`, `url`, `body`): a file of them, or
the lines themselves (each without its newline)."""

Sink = Path | Callable[[bytes], None]
"""Where results go: a directory (whole files), or a function given each line."""


@runtime_checkable
class BatchAPI(Protocol):
    """A provider's batch API, as the batch lane needs it. Whether the provider takes files
    (OpenAI, Azure, Gemini) or inline requests (Anthropic) stays inside."""

    def stage(self, lines: Lines, tags: BatchTags) -> str | None:
        """Put the lines where the provider takes them from ahead of `submit` (an upload), and
        return the opaque handle that `submit` takes; None when the provider takes requests
        inline and there is nothing to stage."""
        ...

    def find_staged(self, tags: BatchTags, size: int) -> str | None:
        """The handle of lines staged earlier under `tags.name` whose size is `size` bytes (the
        proof that they are the batch's, whole), if the provider still has them: what survives
        a crash between `stage` and `submit`."""
        ...

    def submit(
        self, lines: Lines, endpoint: str, tags: BatchTags, *, staged: str | None = None
    ) -> RemoteBatch:
        """Start a batch of `lines` (or of the lines staged as `staged`, when given) on
        `endpoint`, tagged with `tags`, with the 24 h window. Never retried inside: an answer
        lost on the way may hide a batch that was made; look for it with `find` first."""
        ...

    def poll(self, remote_id: str) -> RemoteBatch: ...

    def results(self, remote: RemoteBatch, into: Sink) -> list[Path]:
        """The answer and error lines of a batch that has ended, in our result shape
        (`custom_id`, `response: {status_code, body}`, `error`). Into a directory: as files
        named after the batch, each written whole or not at all (one already there is kept),
        returned in that order; into a function: line by line, returning []."""
        ...

    def cancel(self, remote_id: str) -> RemoteBatch: ...

    def find(self, run_id: str | None = None) -> Iterator[RemoteBatch]:
        """The provider's batches, newest first: those tagged with `run_id`, or all."""
        ...


@dataclass(frozen=True)
class Answer:
    """A real-time answer: its JSON body (usage in `body["usage"]`) and the response's headers
    (rate limits)."""

    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = self.body.get("usage")
        return usage if isinstance(usage, dict) else None


@dataclass(frozen=True)
class CallFailed:
    """A real-time call that brought no usable answer, in our words: why (never a secret),
    whether another try may succeed, the HTTP status and headers if an answer came back (rate
    limits, `retry-after`), whether it may have run and been billed though no answer came back
    (a timeout, a connection lost after sending, an unreadable answer), and the provider's
    error code, when it gave one."""

    reason: str
    retryable: bool
    status: int | None = None
    headers: Mapping[str, str] | None = None
    may_have_run: bool = False
    code: str | None = None

    @property
    def unavailable(self) -> bool:
        """The flex tier had no capacity for the call (429 `resource_unavailable`): not a rate
        limit; try later, or at the standard tier."""
        return self.status == 429 and self.code == "resource_unavailable"

    @property
    def refused_key(self) -> bool:
        """The key (or its permissions) was refused: every other call would be refused alike."""
        return self.status in (401, 403)


@runtime_checkable
class RealtimeAPI(Protocol):
    """A provider's real-time API: one request, one outcome. Every SDK error is translated
    into a CallFailed here; nothing is retried inside (the lane retries, so that every try is
    counted and paced). One instance serves one event loop."""

    async def call(
        self,
        body: dict[str, Any],
        endpoint: str,
        *,
        custom_id: str | None = None,
        timeout_s: float | None = None,
        tier: str = STANDARD,
    ) -> Answer | CallFailed:
        """Send `body` as planned to `endpoint` (e.g. `/v1/chat/completions`); `custom_id`
        names the request to the provider where it can be told; `tier` is the service tier
        (`standard`, or `flex` where `Capabilities.flex` says the provider has it)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do: a batch API, a real-time API, the flex tier of it, embeddings,
    the Responses API, structured output (JSON schema), images in requests."""

    batch: bool = False
    realtime: bool = False
    flex: bool = False
    embeddings: bool = False
    responses: bool = False
    structured_output: bool = False
    images: bool = False

    def check(self, strategy: str, provider: str) -> str | None:
        """Why `provider` cannot run a job of `strategy` (batch, realtime, flex, hybrid), or
        None."""
        if strategy == "flex" and not self.flex:
            return (
                f"provider {provider} has no flex tier (OpenAI's service_tier: flex); use "
                "strategy: realtime, or provider kind openai"
            )
        if strategy == "flex" and self.realtime:
            return None
        if strategy != "batch" and not self.realtime:
            return f"provider {provider} has no real-time API; use strategy: batch"
        if strategy != "realtime" and not self.batch:
            return f"provider {provider} has no batch API; use strategy: realtime"
        return None


@runtime_checkable
class Provider(Protocol):
    """A provider, as the lanes see it: what it can do, its two APIs, and closing it. `name`
    is the kind it was registered as (or its own name); `base_url` is where it is reached,
    without credentials (None: the provider's default)."""

    name: str
    capabilities: Capabilities

    @property
    def base_url(self) -> str | None: ...

    @property
    def batches(self) -> BatchAPI:
        """The provider's batch API (only when `capabilities.batch`)."""
        ...

    def realtime(self) -> RealtimeAPI:
        """A real-time API for the calling thread's event loop (close it with `aclose`; only
        when `capabilities.realtime`)."""
        ...

    def close(self) -> None: ...
