"""The HTTP face of the local server: OpenAI Files, Batches, Chat Completions and Embeddings."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchpilot.jsontypes import json_type_name
from batchpilot.server.clock import VirtualClock
from batchpilot.server.config import ServerConfig
from batchpilot.server.engine import BatchEngine
from batchpilot.server.execution import body_sha256, execute, http_error_body, usage_of
from batchpilot.server.faults import CONTENT_KINDS, FaultPlan
from batchpilot.server.objects import (
    batch_object,
    error_body,
    file_object,
    new_batch_id,
    new_file_id,
)
from batchpilot.server.ratelimit import RateLimiter
from batchpilot.server.responders.base import Responder
from batchpilot.server.state import ServerState, dumps

__all__ = ["build_app"]

log = logging.getLogger(__name__)

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
# Azure OpenAI names the same endpoints without the version prefix.
AZURE_ENDPOINTS = {"/chat/completions": "/v1/chat/completions", "/embeddings": "/v1/embeddings"}
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_FILE_TTL_S = 30 * 86_400
CUSTOM_ID_HEADER = "x-batchpilot-custom-id"
_FILE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _error(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type, code, param), status, headers=headers)


class GuardMiddleware:
    """Body-size limits (413), the optional API key (401) and injected HTTP faults."""

    def __init__(self, app: ASGIApp, server: ServerApp) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config = self.server.config
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        uploads = ("/v1/files", "/openai/files")
        limit = config.max_upload_bytes if path in uploads else config.max_json_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _error(413, f"Request body too large; the limit is {limit} bytes.")(
                scope, receive, send
            )
            return
        if config.api_key is not None:
            given = headers.get("authorization", "")
            if "api-key" in headers:  # Azure OpenAI's header
                given = f"Bearer {headers['api-key']}"
            expected = f"Bearer {config.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                await _error(
                    401,
                    "Incorrect API key provided. Pass the key the server was started with.",
                    code="invalid_api_key",
                )(scope, receive, send)
                return
        if path.startswith(("/v1/", "/openai/")):
            fault = self.server.http_fault(f"{scope['method']} {path}")
            if fault is not None:
                extra: dict[str, str] = {}
                if fault.retry_after_s is not None:
                    extra["retry-after"] = f"{fault.retry_after_s:g}"
                    extra["retry-after-ms"] = str(int(fault.retry_after_s * 1000))
                await JSONResponse(http_error_body(fault), fault.status, headers=extra)(
                    scope, receive, send
                )
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"Request body too large; the limit is {limit} bytes.")
            return message

        await self.app(scope, counted, send)


class ServerApp:
    """State shared by the routes: the store, the clock, the engine and the responder."""

    def __init__(
        self,
        config: ServerConfig,
        state: ServerState,
        clock: VirtualClock,
        responder: Responder,
        faults: FaultPlan,
        engine: BatchEngine,
        count_tokens: Callable[[dict[str, Any], str], int],
    ) -> None:
        self.config = config
        self.state = state
        self.clock = clock
        self.responder = responder
        self.faults = faults
        self.engine = engine
        self.count_tokens = count_tokens
        self.limiter = RateLimiter(config.rate_limits, config.time_scale)
        self._lock = threading.Lock()
        self._http_counters: dict[int, int] = {}
        self._hidden: dict[str, int] = {}
        self._realtime_runs: dict[str, int] = {}

    def http_fault(self, route: str) -> Any:
        if not self.faults.faults:
            return None
        with self._lock:
            return self.faults.http_fault(route, self._http_counters)

    # files ----------------------------------------------------------------------------------

    async def create_file(self, request: Request) -> Response:
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as exc:
            return _error(400, f"Could not parse the multipart upload: {exc}")
        try:
            return await self._store_upload(form)
        finally:
            await form.close()

    async def _store_upload(self, form: FormData) -> Response:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            return _error(
                400,
                "Missing required parameter: 'file'.",
                code="missing_required_parameter",
                param="file",
            )
        if not isinstance(purpose, str) or not purpose:
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
        filename = upload.filename or "upload"
        if purpose == "batch" and not filename.endswith(".jsonl"):
            return _error(
                400,
                "Invalid file format for Batch API. Must be .jsonl",
                code="invalid_file_format",
                param="file",
            )
        now = int(self.clock.now())
        expires_at: int | None = now + BATCH_FILE_TTL_S if purpose == "batch" else None
        seconds = form.get("expires_after[seconds]")
        if isinstance(seconds, str):
            if not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
                return _error(
                    400,
                    "expires_after[seconds] must be between 3600 and 2592000.",
                    code="invalid_value",
                    param="expires_after.seconds",
                )
            expires_at = now + int(seconds)
        file_id = new_file_id()
        path = self.state.file_path(file_id)

        def store() -> int:
            with path.open("wb") as target:
                shutil.copyfileobj(upload.file, target, 1024 * 1024)
            return path.stat().st_size

        size = await run_in_threadpool(store)
        self.state.add_file(file_id, filename, purpose, size, now, expires_at)
        row = self.state.get_file(file_id)
        assert row is not None
        return JSONResponse(file_object(row))

    def _file_or_404(self, file_id: str) -> Any:
        if not file_id or not set(file_id) <= _FILE_ID_CHARS:
            return None
        return self.state.get_file(file_id)

    async def get_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        row = self._file_or_404(file_id)
        if row is None:
            return _error(404, f"No such File object: {file_id}", param="id")
        return JSONResponse(file_object(row))

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        row = self._file_or_404(file_id)
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
        if self._file_or_404(file_id) is None or not self.state.delete_file(file_id):
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
            query.get("purpose"), query.get("after"), limit, order == "asc"
        )
        return JSONResponse(_page([file_object(r) for r in rows], has_more))

    # batches --------------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in body:
                return _error(
                    400,
                    f"Missing required parameter: '{key}'.",
                    code="missing_required_parameter",
                    param=key,
                )
        endpoint = body["endpoint"]
        if endpoint in AZURE_ENDPOINTS and request.url.path.startswith("/openai/"):
            endpoint = AZURE_ENDPOINTS[endpoint]
        if endpoint not in BATCH_ENDPOINTS:
            return _error(
                400,
                f"Invalid value: '{endpoint}'. Supported values are: "
                + " and ".join(f"'{e}'" for e in BATCH_ENDPOINTS)
                + ".",
                code="invalid_value",
                param="endpoint",
            )
        if body["completion_window"] != "24h":
            return _error(
                400,
                f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                code="invalid_value",
                param="completion_window",
            )
        metadata = body.get("metadata")
        problem = _check_metadata(metadata)
        if problem is not None:
            return problem
        now = self.clock.now()
        batch_id = new_batch_id()
        self.state.insert_batch(
            {
                "id": batch_id,
                "status": "validating",
                "endpoint": endpoint,
                "input_file_id": str(body["input_file_id"]),
                "completion_window": "24h",
                "metadata_json": dumps(metadata) if metadata else None,
                "created_at": now,
                "expires_at": now + self.config.completion_window_s,
            }
        )
        row = self.state.get_batch(batch_id)
        assert row is not None
        if self.faults.faults:
            for fault in self.faults.batch_faults(row["seq"], None, metadata or {}):
                if fault.kind == "not_found_after_create":
                    with self._lock:
                        self._hidden[batch_id] = fault.calls
        self.engine.wake()
        return JSONResponse(batch_object(row))

    async def get_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        with self._lock:
            hidden = self._hidden.get(batch_id, 0)
            if hidden:
                self._hidden[batch_id] = hidden - 1
        row = None if hidden else self.state.get_batch(batch_id)
        if row is None:
            return _error(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return JSONResponse(batch_object(row))

    async def list_batches(self, request: Request) -> Response:
        limit = _int_param(request.query_params.get("limit"), 20, 1, 100)
        if limit is None:
            return _error(400, "limit must be an integer between 1 and 100.", param="limit")
        rows, has_more = self.state.list_batches(request.query_params.get("after"), limit)
        return JSONResponse(_page([batch_object(r) for r in rows], has_more))

    async def cancel_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        row = self.state.get_batch(batch_id)
        if row is None:
            return _error(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        status = row["status"]
        if status in ("validating", "in_progress", "finalizing"):
            moved = self.state.update_batch(
                batch_id,
                {"status": "cancelling", "cancelling_at": self.clock.now()},
                expect_status=status,
            )
            if not moved:
                return await self.cancel_batch(request)
            self.engine.wake()
        elif status in ("completed", "failed", "expired"):
            return _error(409, f"Cannot cancel a batch with status '{status}'.")
        row = self.state.get_batch(batch_id)
        assert row is not None
        return JSONResponse(batch_object(row))

    # real time ------------------------------------------------------------------------------

    async def realtime(self, request: Request, endpoint: str) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(
                400,
                "Missing required parameter: 'model'.",
                code="missing_required_parameter",
                param="model",
            )
        accepted = self.config.accepted_models()
        if accepted is not None and model not in accepted:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if body.get("stream"):
            return _error(
                400,
                "Streaming is not supported by the local server.",
                param="stream",
                code="unsupported_value",
            )
        try:
            tokens = self.count_tokens(body, endpoint)
        except Exception:
            tokens = 0
        reserve = tokens + int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        decision = self.limiter.check(model, reserve, self.clock.now())
        headers = dict(decision.headers)
        if not decision.allowed:
            retry = max(decision.retry_after_s, 0.001)
            headers["retry-after"] = f"{retry:.3f}"
            headers["retry-after-ms"] = str(max(1, int(retry * 1000)))
            return _error(
                429, decision.message, decision.kind, "rate_limit_exceeded", headers=headers
            )
        custom_id = request.headers.get(CUSTOM_ID_HEADER)
        digest = body_sha256(body)
        content_fault = None
        if self.faults.faults:
            key = custom_id or digest
            with self._lock:
                run = self._realtime_runs[key] = self._realtime_runs.get(key, 0) + 1
            content_fault = self.faults.request_fault(CONTENT_KINDS, key, run, model)
        # a slow upstream: a client that hangs up meanwhile stops neither the execution nor
        # its bill
        if self.config.realtime_latency_s > 0:
            await asyncio.sleep(self.config.realtime_latency_s)
        if getattr(self.responder, "blocking", True):
            status, response = await run_in_threadpool(
                execute, self.responder, endpoint, body, content_fault
            )
        else:
            status, response = execute(self.responder, endpoint, body, content_fault)
        usage = usage_of(response) if 200 <= status < 300 else (0, 0, 0)
        self.state.add_ledger(
            [(custom_id, None, endpoint, model, digest, status, self.clock.now(), usage)]
        )
        headers["x-request-id"] = "req_" + digest[:32]
        return JSONResponse(response, status, headers=headers)

    async def chat(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/chat/completions")

    async def embeddings(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/embeddings")

    async def models(self, request: Request) -> Response:
        names = sorted(self.config.accepted_models() or {"local"})
        created = int(time.time())
        return JSONResponse(
            _page(
                [
                    {"id": n, "object": "model", "created": created, "owned_by": "batchpilot"}
                    for n in names
                ],
                False,
            )
        )

    # admin ----------------------------------------------------------------------------------

    async def ledger(self, request: Request) -> Response:
        since = _int_param(request.query_params.get("since"), 0, 0, 2**62)
        return JSONResponse(self.state.ledger(since or 0))

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "responder": self.responder.name,
                "virtual_time": self.clock.now(),
                "time_scale": self.clock.scale,
                "engine_error": self.engine.last_error,
            }
        )

    async def echo(self, request: Request) -> Response:
        """The bare framework: parse a JSON body and send it back (a benchmark reference)."""
        body = await _json_body(request)
        return body if isinstance(body, Response) else JSONResponse(body)

    async def advance_clock(self, request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or seconds < 0:
            return _error(400, "seconds must be a non-negative number.", param="seconds")
        now = self.clock.advance(float(seconds))
        self.engine.wake()
        return JSONResponse({"virtual_time": now})


def _int_param(text: str | None, default: int, low: int, high: int) -> int | None:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        return None
    return value if low <= value <= high else None


def _page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


async def _json_body(request: Request) -> dict[str, Any] | Response:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(
            400,
            "We could not parse the JSON body of your request. The body must be a JSON object.",
        )
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    return body


def _check_metadata(metadata: Any) -> Response | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return _error(
            400,
            "Invalid type for 'metadata': expected an object.",
            code="invalid_type",
            param="metadata",
        )
    if len(metadata) > 16:
        return _error(
            400,
            "Invalid 'metadata': at most 16 key-value pairs are allowed.",
            code="invalid_value",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            return _error(
                400,
                f"Invalid 'metadata': key '{key[:70]}' is longer than 64 characters.",
                code="invalid_value",
                param="metadata",
            )
        if not isinstance(value, str):
            return _error(
                400,
                f"Invalid type for 'metadata.{key}': expected a string, but got "
                f"{json_type_name(value)} instead.",
                code="invalid_type",
                param=f"metadata.{key}",
            )
        if len(value) > 512:
            return _error(
                400,
                f"Invalid 'metadata.{key}': values are limited to 512 characters.",
                code="invalid_value",
                param=f"metadata.{key}",
            )
    return None


def build_app(server: ServerApp) -> ASGIApp:
    """The ASGI application of one server."""

    def route(path: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        return Route(path, handler, methods=[method])

    routes = [
        route("/v1/files", server.create_file, "POST"),
        route("/v1/files", server.list_files, "GET"),
        route("/v1/files/{file_id}", server.get_file, "GET"),
        route("/v1/files/{file_id}", server.delete_file, "DELETE"),
        route("/v1/files/{file_id}/content", server.file_content, "GET"),
        route("/v1/batches", server.create_batch, "POST"),
        route("/v1/batches", server.list_batches, "GET"),
        route("/v1/batches/{batch_id}", server.get_batch, "GET"),
        route("/v1/batches/{batch_id}/cancel", server.cancel_batch, "POST"),
        route("/v1/chat/completions", server.chat, "POST"),
        route("/v1/embeddings", server.embeddings, "POST"),
        route("/v1/models", server.models, "GET"),
        route("/_batchpilot/ledger", server.ledger, "GET"),
        route("/_batchpilot/health", server.health, "GET"),
        route("/_batchpilot/clock/advance", server.advance_clock, "POST"),
        route("/_batchpilot/echo", server.echo, "POST"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(
                404,
                f"Unknown request URL: {request.method} {request.url.path}.",
                code="unknown_url",
            )
        if exc.status_code == 405:
            return _error(405, f"Method {request.method} is not allowed for {request.url.path}.")
        return _error(exc.status_code, exc.detail)

    # Azure OpenAI's layout: the same API under /openai, chat and embeddings per deployment.
    routes += [
        Route("/openai" + r.path.removeprefix("/v1"), r.endpoint, methods=r.methods)
        for r in list(routes)
        if r.path.startswith("/v1/")
    ]
    routes += [
        route("/openai/deployments/{deployment}/chat/completions", server.chat, "POST"),
        route("/openai/deployments/{deployment}/embeddings", server.embeddings, "POST"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return GuardMiddleware(app, server)
