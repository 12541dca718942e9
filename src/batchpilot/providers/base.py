"""The provider protocol: the small surface batchpilot needs from a Batch API.

Provider statuses and errors are translated here, at the edge; SDK exceptions never pass it.

    ProviderError (batchpilot.errors)
    ├── ProviderUnavailable   connection failures, timeouts, 5xx, 429 after the SDK's retries
    └── ProviderRejected      4xx: the request itself is wrong
        ├── RemoteNotFound    404 (an object that does not exist, or not yet)
        └── AuthenticationFailed  401/403: the key (or its permissions), not the request
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from batchpilot.errors import ProviderRejected

__all__ = [
    "AuthenticationFailed",
    "Provider",
    "RemoteBatch",
    "RemoteFile",
    "RemoteNotFound",
    "RemoteStatus",
]


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
class RemoteFile:
    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: int


@dataclass(frozen=True)
class RemoteBatch:
    id: str
    status: RemoteStatus
    endpoint: str
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int = 0
    total: int = 0
    completed: int = 0
    failed: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    model: str | None = None


@runtime_checkable
class Provider(Protocol):
    """What the batch lane needs from a provider. Implementations translate statuses and errors."""

    name: str

    def upload(self, path: Path, filename: str) -> RemoteFile:
        """Upload a batch input file (purpose `batch`), streaming it from disk."""
        ...

    def list_files(self, purpose: str = "batch") -> Iterator[RemoteFile]:
        """Every file of that purpose, newest first (follows pagination)."""
        ...

    def delete_file(self, file_id: str) -> None: ...

    def create_batch(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        """Create a batch with the 24 h window; `metadata` tags it (run id, local batch id)."""
        ...

    def get_batch(self, batch_id: str) -> RemoteBatch: ...

    def list_batches(self) -> Iterator[RemoteBatch]:
        """Every batch, newest first (follows pagination)."""
        ...

    def cancel_batch(self, batch_id: str) -> RemoteBatch: ...

    def download(self, file_id: str, target: Path) -> None:
        """Stream a file's content to `target` (written whole or not at all)."""
        ...

    def close(self) -> None: ...
