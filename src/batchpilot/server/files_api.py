"""The Files API: streamed uploads under size and storage limits, each project's own files."""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from batchpilot.server.clock import VirtualClock
from batchpilot.server.config import ServerConfig
from batchpilot.server.objects import file_object, new_file_id
from batchpilot.server.state import ServerState
from batchpilot.server.uploads import Upload, UploadRefused, receive_upload
from batchpilot.server.web import error_response as _error
from batchpilot.server.web import int_param as _int_param
from batchpilot.server.web import owner_of as _owner
from batchpilot.server.web import page as _page

__all__ = ["FilesApi"]

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_FILE_TTL_S = 30 * 86_400
JSONL_SNIFF_BYTES = 64 * 1024
_FILE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def looks_like_jsonl(path: Path) -> bool:
    """Whether a batch upload is JSON Lines, judged by its content as the API does, whatever
    the file's name (the SDK names bytes `upload`): UTF-8 text without NUL bytes whose first
    non-blank character opens a JSON object (or that is blank: the batch then fails
    with `empty_file`). Each line's JSON is checked when a batch runs it."""
    try:
        with path.open("rb") as handle:
            head = handle.read(JSONL_SNIFF_BYTES)
    except OSError:
        return False
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    start = text.lstrip()[:1]
    return "\x00" not in text and start in ("", "{")


class FilesApi:
    """`/v1/files` routes over the server state."""

    def __init__(self, config: ServerConfig, state: ServerState, clock: VirtualClock) -> None:
        self.config = config
        self.state = state
        self.clock = clock
        self._lock = threading.Lock()
        self._uploading: dict[tuple[str, str], int] = {}

    async def create_file(self, request: Request) -> Response:
        owner, file_id = _owner(request), new_file_id()
        path = self.state.file_path(file_id)
        try:
            upload = await receive_upload(request, path, self._storage_check(owner, file_id))
            problem = await run_in_threadpool(self._upload_problem, upload, path)
            if problem is not None:
                path.unlink(missing_ok=True)
                return problem
            now = int(self.clock.now())
            purpose = upload.fields["purpose"]
            expires_at: int | None = now + BATCH_FILE_TTL_S if purpose == "batch" else None
            seconds = upload.fields.get("expires_after[seconds]")
            if seconds is not None:
                expires_at = now + int(seconds)
            filename = upload.filename or "upload"
            self.state.add_file(file_id, filename, purpose, upload.size, now, expires_at, owner)
        except UploadRefused as refused:
            return _error(refused.status, refused.message, code=refused.code, param=refused.param)
        finally:
            with self._lock:
                self._uploading.pop((owner, file_id), None)
        row = self.state.get_file(file_id)
        assert row is not None
        return JSONResponse(file_object(row))

    def _storage_check(self, owner: str, file_id: str) -> Callable[[int], None]:
        """Refuses an upload past the file size limit or the project's storage limit."""
        per_file, quota = self.config.max_upload_bytes, self.config.max_storage_bytes

        def check(size: int) -> None:
            if size > per_file:
                raise UploadRefused(
                    413,
                    f"The file is larger than {per_file} bytes, the most one file may hold.",
                    "file_too_large",
                    "file",
                )
            with self._lock:
                used = self.state.stored_bytes(owner) + sum(
                    n for (o, f), n in self._uploading.items() if o == owner and f != file_id
                )
                if used + size > quota:
                    raise UploadRefused(
                        400,
                        f"This upload would take the project's files past its storage limit of "
                        f"{quota} bytes ({used} bytes are in use); delete files it no longer "
                        "needs.",
                        "storage_limit_exceeded",
                        "file",
                    )
                self._uploading[owner, file_id] = size

        return check

    @staticmethod
    def _upload_problem(upload: Upload, path: Path) -> Response | None:
        purpose = upload.fields.get("purpose")
        if upload.filename is None:
            return _error(
                400,
                "Missing required parameter: 'file'.",
                code="missing_required_parameter",
                param="file",
            )
        if not purpose:
            return _error(
                400,
                "Missing required parameter: 'purpose'.",
                code="missing_required_parameter",
                param="purpose",
            )
        if purpose not in FILE_PURPOSES:
            return _error(
                400,
                f"Invalid value: '{purpose}'. Supported values are: "
                + ", ".join(f"'{p}'" for p in FILE_PURPOSES),
                code="invalid_value",
                param="purpose",
            )
        if purpose == "batch" and not looks_like_jsonl(path):
            return _error(
                400,
                "Invalid file format for Batch API. Must be .jsonl",
                code="invalid_file_format",
                param="file",
            )
        seconds = upload.fields.get("expires_after[seconds]")
        if seconds is not None and (not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000):
            return _error(
                400,
                "expires_after[seconds] must be between 3600 and 2592000.",
                code="invalid_value",
                param="expires_after.seconds",
            )
        return None

    def _file_or_404(self, request: Request, file_id: str) -> Any:
        if not file_id or not set(file_id) <= _FILE_ID_CHARS:
            return None
        row = self.state.get_file(file_id, _owner(request))
        return None if row is None or self._expired(row) else row

    def _expired(self, row: Any) -> bool:
        """A file past its `expires_at` is gone, as on the API."""
        return row["expires_at"] is not None and row["expires_at"] <= self.clock.now()

    async def get_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        row = self._file_or_404(request, file_id)
        if row is None:
            return _error(404, f"No such File object: {file_id}", param="id")
        return JSONResponse(file_object(row))

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        row = self._file_or_404(request, file_id)
        path = self.state.file_path(file_id)
        if row is None or not path.is_file():
            return _error(404, f"No such File object: {file_id}", param="id")

        def chunks() -> Any:
            with path.open("rb") as handle:
                while chunk := handle.read(1024 * 1024):
                    yield chunk

        return StreamingResponse(
            chunks(),
            media_type="application/octet-stream",
            headers={"content-length": str(path.stat().st_size)},
        )

    async def delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if self._file_or_404(request, file_id) is None or not self.state.delete_file(file_id):
            return _error(404, f"No such File object: {file_id}", param="id")
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def list_files(self, request: Request) -> Response:
        query = request.query_params
        limit = _int_param(query.get("limit"), 10_000, 1, 10_000)
        if limit is None:
            return _error(400, "limit must be an integer between 1 and 10000.", param="limit")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            return _error(400, "order must be 'asc' or 'desc'.", param="order")
        rows, has_more = self.state.list_files(
            _owner(request), query.get("purpose"), query.get("after"), limit, order == "asc"
        )
        kept = [file_object(r) for r in rows if not self._expired(r)]
        return JSONResponse(_page(kept, has_more))
