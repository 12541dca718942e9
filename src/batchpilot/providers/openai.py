"""The OpenAI Batch and Files APIs through the official SDK (OpenAI, Azure OpenAI, compatible).

Every SDK exception is translated here:

    404                                         RemoteNotFound
    401, 403                                    AuthenticationFailed (a ProviderRejected)
    other 4xx except 408/409/429                ProviderRejected
    408, 409, 429, 5xx, connection, timeout     ProviderUnavailable (after the SDK's own retries)

A 409 on cancel means "this batch cannot be cancelled any more" and is a ProviderRejected.
Batch creation is not retried by the SDK (it is not idempotent): the runner retries it after
reconciling against the listing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import httpx2
import openai
from openai.types import Batch, FileObject

from batchpilot.errors import ProviderError, ProviderRejected, ProviderUnavailable, UserInputError
from batchpilot.providers.base import (
    AuthenticationFailed,
    RemoteBatch,
    RemoteFile,
    RemoteNotFound,
    RemoteStatus,
)
from batchpilot.providers.retry import retryable_status

__all__ = ["AZURE_API_VERSION", "OpenAIProvider", "error_detail", "openai_provider"]

log = logging.getLogger(__name__)

AZURE_API_VERSION = "2024-10-21"
COMPATIBLE_PLACEHOLDER_KEY = "not-needed"

_STATUSES: dict[str, RemoteStatus] = {status.value: status for status in RemoteStatus}
_DETAIL_LIMIT = 500


class OpenAIProvider:
    """The Provider protocol over an injected `openai.OpenAI` (or `AzureOpenAI`) client."""

    def __init__(self, client: openai.OpenAI, *, name: str = "openai") -> None:
        self.name = name
        self._client = client

    @property
    def client(self) -> openai.OpenAI:
        return self._client

    def async_client(self) -> openai.AsyncOpenAI:
        """An async client with the same endpoint and credentials, for the real-time lane (its
        own retries off: the lane retries)."""
        client = self._client
        if isinstance(client, openai.AzureOpenAI):
            return _async_azure(client)
        return openai.AsyncOpenAI(
            api_key=client.api_key,
            base_url=client.base_url,
            organization=client.organization,
            project=client.project,
            max_retries=0,
        )

    # files ----------------------------------------------------------------------------------

    def upload(self, path: Path, filename: str) -> RemoteFile:
        with path.open("rb") as handle, self._edge(f"uploading {path} as {filename}"):
            created = self._client.files.create(file=(filename, handle), purpose="batch")
        return _remote_file(created)

    def list_files(self, purpose: str = "batch") -> Iterator[RemoteFile]:
        with self._edge(f"listing {purpose} files"):
            for item in self._client.files.list(purpose=purpose, order="desc"):
                yield _remote_file(item)

    def delete_file(self, file_id: str) -> None:
        with self._edge(f"deleting file {file_id}"):
            self._client.files.delete(file_id)

    def download(self, file_id: str, target: Path) -> None:
        part = target.with_suffix(target.suffix + ".part")
        try:
            with (
                self._edge(f"downloading file {file_id}"),
                self._client.files.with_streaming_response.content(file_id) as response,
                part.open("wb") as out,
            ):
                for chunk in response.iter_bytes(1024 * 1024):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            part.replace(target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    # batches --------------------------------------------------------------------------------

    def create_batch(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> RemoteBatch:
        # Never retried inside the SDK: a create whose answer was lost may have created the
        # batch, and the SDK would blindly create a second one (paid twice). The caller retries
        # after looking for the batch by its metadata.
        with self._edge(f"creating batch for file {file_id}"):
            batch = self._client.with_options(max_retries=0).batches.create(
                input_file_id=file_id,
                endpoint=cast(Any, endpoint),
                completion_window="24h",
                metadata=metadata or None,
            )
        return _remote_batch(batch)

    def get_batch(self, batch_id: str) -> RemoteBatch:
        with self._edge(f"reading batch {batch_id}"):
            batch = self._client.batches.retrieve(batch_id)
        return _remote_batch(batch)

    def list_batches(self) -> Iterator[RemoteBatch]:
        with self._edge("listing batches"):
            for batch in self._client.batches.list(limit=100):
                yield _remote_batch(batch)

    def cancel_batch(self, batch_id: str) -> RemoteBatch:
        with self._edge(f"cancelling batch {batch_id}", conflict_rejects=True):
            batch = self._client.batches.cancel(batch_id)
        return _remote_batch(batch)

    def close(self) -> None:
        self._client.close()

    # the edge -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _edge(self, what: str, *, conflict_rejects: bool = False) -> Iterator[None]:
        """Translate SDK (and, while streaming, HTTP) exceptions into ours."""
        try:
            yield
        except openai.OpenAIError as exc:
            raise translate_error(
                exc, what, secret=self._client.api_key, conflict_rejects=conflict_rejects
            ) from exc
        except httpx2.HTTPError as exc:
            message = _redact(f"{what}: connection lost: {exc}", self._client.api_key)
            raise ProviderUnavailable(message) from exc


def _async_azure(client: openai.AzureOpenAI) -> openai.AsyncAzureOpenAI:
    """The async twin of an Azure client: same endpoint and deployment (or base URL), API
    version, key or Azure AD token, organization, project and timeout."""
    # The SDK keeps the endpoint, deployment, version and AD token only as private fields; the
    # public base URL alone would route non-deployment paths (e.g. /responses) differently.
    common: dict[str, Any] = {
        "api_version": client._api_version,
        "api_key": client.api_key,
        "azure_ad_token": client._azure_ad_token,
        "azure_ad_token_provider": client._azure_ad_token_provider,
        "organization": client.organization,
        "project": client.project,
        "timeout": client.timeout,
        "max_retries": 0,
    }
    endpoint = client._azure_endpoint
    if endpoint is None:
        return openai.AsyncAzureOpenAI(base_url=str(client.base_url), **common)
    return openai.AsyncAzureOpenAI(
        azure_endpoint=str(endpoint), azure_deployment=client._azure_deployment, **common
    )


def translate_error(
    exc: openai.OpenAIError, what: str, *, secret: str | None, conflict_rejects: bool = False
) -> ProviderError:
    """Our exception for an SDK exception; the message names the operation, never the key."""
    error: ProviderError
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{what}: {status} {error_detail(exc)}"
        if exc.request_id:
            message += f" (request id {exc.request_id})"
        if status == 404:
            error = RemoteNotFound(_redact(message, secret))
        elif status in (401, 403):
            error = AuthenticationFailed(_redact(message, secret))
        elif 400 <= status < 500 and (
            not retryable_status(status) or (status == 409 and conflict_rejects)
        ):
            error = ProviderRejected(_redact(message, secret))
        else:
            error = ProviderUnavailable(_redact(message, secret))
        return error
    if isinstance(exc, openai.APITimeoutError):
        message = f"{what}: {exc.request.method} {exc.request.url} timed out"
    elif isinstance(exc, openai.APIConnectionError):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        message = f"{what}: cannot reach {exc.request.method} {exc.request.url}{cause}"
    elif isinstance(exc, openai.APIResponseValidationError):
        message = f"{what}: unexpected response ({exc.status_code}): {exc.message}"
    else:
        message = f"{what}: {type(exc).__name__}: {exc}"
    return ProviderUnavailable(_redact(message, secret))


def error_detail(exc: openai.APIStatusError) -> str:
    """The server's `code: message` of an error answer, cut to a readable length."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        code = body.get("code") or body.get("type")
        text = f"{code}: {body['message']}" if code else str(body["message"])
    else:
        text = exc.message
    return text if len(text) <= _DETAIL_LIMIT else text[:_DETAIL_LIMIT] + "…"


def _redact(message: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        return message.replace(secret, "***")
    return message


def _remote_file(item: FileObject) -> RemoteFile:
    return RemoteFile(
        id=item.id,
        filename=item.filename,
        bytes=item.bytes,
        purpose=item.purpose,
        created_at=item.created_at,
    )


def _remote_batch(batch: Batch) -> RemoteBatch:
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
        input_file_id=batch.input_file_id,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        created_at=batch.created_at,
        total=counts.total if counts is not None else 0,
        completed=counts.completed if counts is not None else 0,
        failed=counts.failed if counts is not None else 0,
        metadata=dict(batch.metadata or {}),
        errors=[
            {"code": e.code, "message": e.message, "line": e.line, "param": e.param} for e in errors
        ],
        usage=batch.usage.model_dump() if batch.usage is not None else None,
        model=batch.model,
    )


def openai_provider(
    *,
    base_url: str | None,
    api_key_env: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    kind: Literal["openai", "azure", "compatible"] = "openai",
    api_version: str | None = None,
    max_retries: int = 2,
    timeout: float = 600.0,
    environ: Mapping[str, str] | None = None,
    http_client: httpx2.Client | None = None,
) -> OpenAIProvider:
    """Build a provider from settings and the environment (`os.environ` unless given).

    The key comes from `api_key_env` (default OPENAI_API_KEY; azure: AZURE_OPENAI_API_KEY). A
    `compatible` server without a key in the default variable gets a placeholder key.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    variable = api_key_env or ("AZURE_OPENAI_API_KEY" if kind == "azure" else "OPENAI_API_KEY")
    api_key = env.get(variable) or None
    if api_key is None:
        if kind != "compatible" or api_key_env is not None:
            raise UserInputError(
                f"no API key for the {kind} provider: set the environment variable {variable} "
                "(or name another variable with provider.api_key_env)"
            )
        api_key = COMPATIBLE_PLACEHOLDER_KEY
    organization = organization or env.get("OPENAI_ORG_ID") or None
    project = project or env.get("OPENAI_PROJECT_ID") or None
    url_variable = "AZURE_OPENAI_ENDPOINT" if kind == "azure" else "OPENAI_BASE_URL"
    base_url = base_url or env.get(url_variable) or None
    if base_url is None and kind != "openai":
        raise UserInputError(
            f"the {kind} provider needs a base URL: set provider.base_url in the job "
            f"or the environment variable {url_variable}"
        )
    client: openai.OpenAI
    if kind == "azure" and base_url is not None:
        client = openai.AzureOpenAI(
            azure_endpoint=base_url,
            api_version=api_version or AZURE_API_VERSION,
            api_key=api_key,
            organization=organization,
            max_retries=max_retries,
            timeout=timeout,
            http_client=http_client,
        )
    else:
        client = openai.OpenAI(
            api_key=api_key,
            organization=organization,
            project=project,
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout,
            http_client=http_client,
        )
    return OpenAIProvider(client, name=kind)
