"""Multipart file uploads streamed straight into the state directory, checked as they arrive.

The file part is written to its final path chunk by chunk; `check(bytes_so_far)` runs after each
chunk and may refuse the upload (size or storage limits), which stops reading at once and removes
the partial file. Nothing is spooled to a temporary directory and no file is held in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["Upload", "UploadRefused", "receive_upload"]

MAX_FIELDS = 10
MAX_FIELD_BYTES = 64 * 1024


class UploadRefused(Exception):
    """An upload the API refuses, with its HTTP status, message, code and parameter."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


@dataclass
class Upload:
    """The form fields of an upload and, when it had one, its file part's name and size."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)
    header_name: bytes = b""
    header_value: bytes = b""
    disposition: bytes = b""


class _Collector:
    """Parser callbacks: fields kept in memory (small), file bytes queued for the writer."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        self.part = _Part()
        self.pending: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.part.header_name.lower() == b"content-disposition":
            self.part.disposition = self.part.header_value
        self.part.header_name = self.part.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        if b"name" not in options:
            raise UploadRefused(400, "Each multipart part needs a name in Content-Disposition.")
        self.part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self.part.name != "file":
                raise UploadRefused(
                    400,
                    f"Unexpected file in form field '{self.part.name}'; send the file as 'file'.",
                    param=self.part.name,
                )
            if self.upload.filename is not None:
                raise UploadRefused(400, "Upload one file per request.", param="file")
            self.part.is_file = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise UploadRefused(400, f"At most {MAX_FIELDS} form fields are accepted.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.is_file:
            self.pending.append(data[start:end])
            self.upload.size += end - start
            return
        if len(self.part.data) + end - start > MAX_FIELD_BYTES:
            raise UploadRefused(
                400, f"Form field '{self.part.name}' is longer than {MAX_FIELD_BYTES} bytes."
            )
        self.part.data += data[start:end]

    def on_part_end(self) -> None:
        if not self.part.is_file:
            self.upload.fields[self.part.name] = self.part.data.decode("utf-8", "replace")


async def receive_upload(request: Request, target: Path, check: Callable[[int], None]) -> Upload:
    """Read a multipart body, writing its one file part to `target`.

    `check` sees the file's size so far after every chunk and raises UploadRefused to stop. On any
    error `target` is removed; without a file part it is not left behind either.
    """
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not request.headers.get("content-type", "").startswith("multipart/form-data") or not (
        boundary
    ):
        raise UploadRefused(400, "The upload must be multipart/form-data with a boundary.")
    upload = Upload()
    collector = _Collector(upload)
    parser = MultipartParser(boundary, collector.callbacks())
    handle: BinaryIO = await run_in_threadpool(target.open, "wb")
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if collector.pending:
                data = b"".join(collector.pending)
                collector.pending.clear()
                check(upload.size)
                await run_in_threadpool(handle.write, data)
        parser.finalize()
        await run_in_threadpool(handle.close)
    except BaseException as exc:
        handle.close()
        target.unlink(missing_ok=True)
        if isinstance(exc, FormParserError):
            raise UploadRefused(400, f"Could not parse the multipart upload: {exc}") from None
        raise
    if upload.filename is None:
        target.unlink(missing_ok=True)
    return upload
