"""The guard in front of every route: body-size limits, API keys and projects, loopback-only
service without keys, injected HTTP faults, and the error envelope for anything unexpected."""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any, Protocol

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchpilot.server.config import ServerConfig
from batchpilot.server.execution import http_error_body
from batchpilot.server.web import PROJECT, error_response, is_loopback, project_of, server_error

__all__ = ["GuardMiddleware"]

log = logging.getLogger(__name__)


def _with_request_id(send: Send) -> Send:
    """`send` that puts an `x-request-id: req_<hex>` header on the answer, as the API does on
    every answer, errors included."""
    request_id = ("req_" + secrets.token_hex(16)).encode()

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"x-request-id" for name, _ in headers):
                headers.append((b"x-request-id", request_id))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_id


class Guarded(Protocol):
    config: ServerConfig

    def http_fault(self, route: str) -> Any: ...


class GuardMiddleware:
    """Body-size limits (413), API keys (401), loopback-only service (403), HTTP faults, and
    an `x-request-id` on every answer."""

    def __init__(self, app: ASGIApp, server: Guarded) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._guard(scope, receive, _with_request_id(send))

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.server.config
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        uploads = ("/v1/files", "/openai/files")
        upload = path in uploads or path.startswith("/_gemini/upload/")
        limit = config.max_upload_bytes if upload else config.max_json_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(413, f"Request body too large; the limit is {limit} bytes.")(
                scope, receive, send
            )
            return
        keys = config.keys()
        if keys:
            given = headers.get("authorization", "")
            if "api-key" in headers:  # Azure OpenAI's header
                given = f"Bearer {headers['api-key']}"
            if "x-api-key" in headers:  # Anthropic's header
                given = f"Bearer {headers['x-api-key']}"
            if "x-goog-api-key" in headers:  # Gemini's header
                given = f"Bearer {headers['x-goog-api-key']}"
            project = None
            for key in keys:
                if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                    project = project_of(key)
            if project is None:
                await error_response(
                    401,
                    "Incorrect API key provided. Pass a key the server was started with.",
                    code="invalid_api_key",
                )(scope, receive, send)
                return
            scope[PROJECT] = project
        elif not is_loopback(scope.get("client")):
            await error_response(
                403,
                "This server has no API keys, so it answers loopback clients only. Start it "
                "with --api-key to serve other machines.",
                "permission_denied",
                code="loopback_only",
            )(scope, receive, send)
            return
        if path.startswith(("/v1/", "/openai/", "/_gemini/")):
            route = path.removeprefix("/_gemini")
            fault = self.server.http_fault(f"{scope['method']} {route}")
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

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            log.exception("%s %s failed", scope["method"], path)
            if not started:
                await server_error()(scope, receive, send)
