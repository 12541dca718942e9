"""Gemini's Files API on the local server: the resumable upload the `google-genai` SDK uses
(a `start` call that answers with an upload URL, then chunks sent there with `upload` and the
last with `upload, finalize`), get, list, delete and download (`:download?alt=media`).

A batch's responses file (`files/batch-<id>`) is a generated file: its lines are made from the
batch's results when it is read, as the Anthropic results stream is.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from batchpilot.server.gemini_content import gemini_error
from batchpilot.server.state import dumps
from batchpilot.server.web import int_param, owner_of
from batchpilot.store.database import Row

if TYPE_CHECKING:
    from batchpilot.server.clock import VirtualClock
    from batchpilot.server.config import ServerConfig
    from batchpilot.server.engine import BatchEngine
    from batchpilot.server.state import ServerState

__all__ = [
    "PREFIX",
    "Batches",
    "GeminiFiles",
    "Host",
    "batch_id_of_output",
    "file_state_id",
    "rfc3339",
]

PREFIX = "/_gemini"
"""Where the server's Gemini routes live; GeminiFace moves Gemini's requests there."""

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_PURPOSE = "gemini"
_KEPT_S = 48 * 3600  # uploaded files are kept 48 hours
_CHUNK = 1024 * 1024


class Host(Protocol):
    """What Gemini's routes use of the server they are part of."""

    config: ServerConfig
    state: ServerState
    clock: VirtualClock
    engine: BatchEngine

    async def realtime(
        self, request: Request, endpoint: str, body: dict[str, Any] | None = None
    ) -> Response: ...


class Batches(Protocol):
    """What the files use of the batches: a batch by name, and its responses."""

    def row(self, target: str, owner: str) -> Row | None: ...

    def responses(self, row: Row) -> Iterator[dict[str, Any]]: ...


def rfc3339(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def batch_id_of_output(name: str) -> str | None:
    """The batch whose responses file is `name` (files/batch-<id>), if it is one."""
    bare = name.removeprefix("files/")
    return bare.removeprefix("batch-") if bare.startswith("batch-") else None


def file_state_id(name: str) -> str:
    """The server's id of the Gemini file `name` (files/<id> or <id>)."""
    return "gfile-" + name.removeprefix("files/")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(gemini_error(status, message), status)


def _upload_error(status: int, message: str) -> JSONResponse:
    """An upload step refused for good: the status header stops the SDK's retries of it."""
    return JSONResponse(gemini_error(status, message), status, {"x-goog-upload-status": "final"})


@dataclass
class _Session:
    owner: str
    path: Path
    size: int
    display_name: str
    mime_type: str
    received: int = 0


class GeminiFiles:
    """Files of Gemini's API over one server's state; `api` makes the batches' responses."""

    def __init__(self, server: Host, api: Batches) -> None:
        self.server = server
        self.api = api
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def routes(self) -> list[Route]:
        base = PREFIX + "/{version}/files"
        return [
            Route(PREFIX + "/upload/{version}/files", self.upload, methods=["POST"]),
            Route(base, self.list_files, methods=["GET"]),
            Route(base + "/{target}", self.get, methods=["GET"]),
            Route(base + "/{target}", self.delete, methods=["DELETE"]),
        ]

    # uploads ----------------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        upload_id = request.query_params.get("upload_id")
        if upload_id is None:
            return await self._start(request)
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is None or session.owner != owner_of(request):
            return _upload_error(404, "No such upload session. Start the upload again.")
        command = request.headers.get("x-goog-upload-command", "")
        offset = request.headers.get("x-goog-upload-offset", "")
        if "upload" not in command or not offset.isdigit() or int(offset) != session.received:
            return _upload_error(400, f"The upload expects offset {session.received}.")
        with session.path.open("ab") as out:
            async for chunk in request.stream():
                session.received += len(chunk)
                if session.received > session.size:
                    return _upload_error(
                        400, f"The upload is longer than its {session.size} bytes."
                    )
                out.write(chunk)
        if "finalize" not in command:
            return Response(b"", headers={"x-goog-upload-status": "active"})
        with self._lock:
            self._sessions.pop(upload_id, None)
        if session.received != session.size:
            session.path.unlink(missing_ok=True)
            return _upload_error(400, f"The upload has {session.received} of {session.size} bytes.")
        name = "".join(secrets.choice(_ALNUM) for _ in range(12))
        state, now = self.server.state, self.server.clock.now()
        session.path.replace(state.file_path(file_state_id(name)))
        state.add_file(
            file_state_id(name),
            session.display_name,
            f"{_PURPOSE} {session.mime_type}",
            session.size,
            int(now),
            int(now) + _KEPT_S,
            session.owner,
        )
        row = state.get_file(file_state_id(name))
        assert row is not None
        return JSONResponse(
            {"file": self._file(row, str(request.base_url))},
            headers={"x-goog-upload-status": "final"},
        )

    async def _start(self, request: Request) -> Response:
        headers = request.headers
        if headers.get("x-goog-upload-protocol") != "resumable":
            return _error(400, "The local server takes resumable uploads only.")
        if headers.get("x-goog-upload-command") != "start":
            return _error(400, "A resumable upload begins with X-Goog-Upload-Command: start.")
        size = headers.get("x-goog-upload-header-content-length", "")
        if not size.isdigit():
            return _error(400, "X-Goog-Upload-Header-Content-Length is required.")
        if int(size) > self.server.config.max_upload_bytes:
            limit = self.server.config.max_upload_bytes
            return _error(400, f"The file is larger than the {limit} bytes accepted.")
        try:
            body = await request.json()
        except ValueError:
            body = {}
        described = body.get("file") if isinstance(body, dict) else None
        described = described if isinstance(described, dict) else {}
        mime = headers.get("x-goog-upload-header-content-type") or described.get("mimeType")
        display = described.get("displayName") or described.get("display_name")
        upload_id = secrets.token_hex(16)
        session = _Session(
            owner_of(request),
            self.server.state.file_path(f"gupload-{upload_id}"),
            int(size),
            str(display or ""),
            str(mime or "application/octet-stream"),
        )
        session.path.write_bytes(b"")
        with self._lock:
            self._sessions[upload_id] = session
        version = request.path_params["version"]
        url = f"{request.base_url}upload/{version}/files?upload_id={upload_id}"
        url += "&upload_protocol=resumable"
        return Response(
            b"{}",
            media_type="application/json",
            headers={
                "x-goog-upload-url": url,
                "x-goog-upload-status": "active",
                "x-goog-upload-chunk-granularity": str(_CHUNK),
            },
        )

    # files ------------------------------------------------------------------------------------

    def _file(self, row: Row, base_url: str) -> dict[str, Any]:
        name = "files/" + str(row["id"]).removeprefix("gfile-")
        return {
            "name": name,
            "displayName": row["filename"],
            "mimeType": str(row["purpose"]).removeprefix(_PURPOSE).strip(),
            "sizeBytes": str(row["bytes"]),
            "createTime": rfc3339(row["created_at"]),
            "updateTime": rfc3339(row["created_at"]),
            "expirationTime": rfc3339(row["expires_at"]),
            "uri": f"{base_url}v1beta/{name}",
            "state": "ACTIVE",
            "source": "UPLOADED",
        }

    def _output(self, row: Row, base_url: str) -> dict[str, Any]:
        name = f"files/batch-{row['id']}"
        ended = row[f"{row['status']}_at"]
        return {
            "name": name,
            "displayName": name,
            "mimeType": "application/jsonl",
            "createTime": rfc3339(ended),
            "updateTime": rfc3339(ended),
            "uri": f"{base_url}v1beta/{name}",
            "downloadUri": f"{base_url}v1beta/{name}:download?alt=media",
            "state": "ACTIVE",
            "source": "GENERATED",
        }

    def _output_row(self, name: str, owner: str) -> Row | None:
        batch_id = batch_id_of_output(name)
        if batch_id is None:
            return None
        row = self.api.row(batch_id, owner)
        if row is None or row["status"] not in ("completed", "failed", "expired", "cancelled"):
            return None
        return row

    async def get(self, request: Request) -> Response:
        target, _, method = request.path_params["target"].partition(":")
        owner, base = owner_of(request), str(request.base_url)
        output = self._output_row(target, owner)
        if output is not None:
            if method == "download":
                return self._download_output(output)
            return JSONResponse(self._output(output, base))
        row = self.server.state.get_file(file_state_id(target), owner)
        if row is None or not str(row["purpose"]).startswith(_PURPOSE):
            return _error(404, f"File files/{target} not found.")
        if method == "download":
            path = self.server.state.file_path(row["id"])

            async def stream() -> AsyncIterator[bytes]:
                with path.open("rb") as handle:
                    while chunk := handle.read(_CHUNK):
                        yield chunk

            return StreamingResponse(stream(), media_type="application/octet-stream")
        if method:
            return _error(404, f"Method {method!r} is not served by the local server.")
        return JSONResponse(self._file(row, base))

    def _download_output(self, row: Row) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            for item in self.api.responses(row):
                yield dumps(item).encode() + b"\n"

        return StreamingResponse(stream(), media_type="application/octet-stream")

    async def delete(self, request: Request) -> Response:
        target = request.path_params["target"]
        row = self.server.state.get_file(file_state_id(target), owner_of(request))
        if row is None or not str(row["purpose"]).startswith(_PURPOSE):
            return _error(404, f"File files/{target} not found.")
        self.server.state.delete_file(row["id"])
        return JSONResponse({})

    async def list_files(self, request: Request) -> Response:
        size = int_param(request.query_params.get("pageSize"), 10, 1, 100)
        if size is None:
            return _error(400, "* page_size: Invalid value (an integer from 1 to 100)")
        token = request.query_params.get("pageToken") or ""
        where = "owner = ? AND deleted = 0 AND purpose LIKE ?"
        params: list[Any] = [owner_of(request), _PURPOSE + " %"]
        if token.isdigit():
            where += " AND seq < ?"
            params.append(int(token))
        rows = (
            self.server.state.read()
            .execute(
                f"SELECT * FROM files WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, size + 1)
            )
            .fetchall()
        )
        page = list(rows[:size])
        answer: dict[str, Any] = {"files": [self._file(r, str(request.base_url)) for r in page]}
        if len(rows) > size:
            answer["nextPageToken"] = str(page[-1]["seq"])
        return JSONResponse(answer)
