"""The HTTP face of the local server: OpenAI Files, Batches, Responses, Chat Completions,
Embeddings, Completions, Moderations, Image generations and Models."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from batchpilot.jsontypes import json_type_name
from batchpilot.server.anthropic_api import AnthropicApi, AnthropicErrors
from batchpilot.server.batch_params import check_metadata, output_expires_after
from batchpilot.server.bodies import BodyProblem, json_object
from batchpilot.server.clock import VirtualClock
from batchpilot.server.config import ServerConfig
from batchpilot.server.engine import BatchEngine
from batchpilot.server.execution import body_sha256, execute, usage_of
from batchpilot.server.faults import CONTENT_KINDS, FaultPlan
from batchpilot.server.files_api import FilesApi
from batchpilot.server.flex import FLEX, FlexTier, answered_tier, mark_tier
from batchpilot.server.gemini_api import GeminiApi
from batchpilot.server.gemini_face import GeminiFace
from batchpilot.server.guard import GuardMiddleware
from batchpilot.server.media_endpoints import DEFAULT_VIDEO_MODEL, form_body
from batchpilot.server.objects import batch_object, new_batch_id
from batchpilot.server.ratelimit import RateLimiter
from batchpilot.server.responders.base import Responder
from batchpilot.server.state import ServerState, dumps
from batchpilot.server.streaming import chat_events, response_events
from batchpilot.server.web import error_response as _error
from batchpilot.server.web import int_param as _int_param
from batchpilot.server.web import owner_of as _owner
from batchpilot.server.web import page as _page
from batchpilot.server.web import server_error

__all__ = ["build_app"]

log = logging.getLogger(__name__)

BATCH_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
# Azure OpenAI names the same endpoints without the version prefix.
AZURE_ENDPOINTS = {e.removeprefix("/v1"): e for e in BATCH_ENDPOINTS}
CUSTOM_ID_HEADER = "x-batchpilot-custom-id"
MAX_CLOCK_STEP_S = 100 * 365 * 86_400
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
# When the models were made: a fixed date, so that a model object never changes.
MODEL_CREATED = 1_686_935_002


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
        self._limiters: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()
        self._http_counters: dict[int, int] = {}
        self._hidden: dict[str, int] = {}
        self._realtime_runs: dict[str, int] = {}
        self.flex = FlexTier(config)
        self.files = FilesApi(config, state, clock)

    def limiter(self, owner: str) -> RateLimiter:
        """Each project's own real-time limits, as each project has its own on the real API."""
        with self._lock:
            limiter = self._limiters.get(owner)
            if limiter is None:
                limiter = RateLimiter(self.config.rate_limits, self.config.time_scale)
                self._limiters[owner] = limiter
            return limiter

    def http_fault(self, route: str) -> Any:
        if not self.faults.faults:
            return None
        with self._lock:
            return self.faults.http_fault(route, self._http_counters)

    # batches --------------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        body = await _json_body(request, self.config)
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
            if not isinstance(body[key], str):
                return _error(
                    400,
                    f"Invalid type for '{key}': expected a string, but got "
                    f"{json_type_name(body[key])} instead.",
                    code="invalid_type",
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
        problem = check_metadata(metadata)
        if problem is not None:
            return problem
        expires_after = output_expires_after(body.get("output_expires_after"))
        if isinstance(expires_after, Response):
            return expires_after
        now = self.clock.now()
        batch_id = new_batch_id()
        row = self.state.insert_batch(
            {
                "id": batch_id,
                "status": "validating",
                "endpoint": endpoint,
                "input_file_id": str(body["input_file_id"]),
                "completion_window": "24h",
                "metadata_json": dumps(metadata) if metadata else None,
                "created_at": now,
                "expires_at": now + self.config.completion_window_s,
                "owner": _owner(request),
                "output_expires_after_s": expires_after,
            }
        )
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
        row = None if hidden else self.state.get_batch(batch_id, _owner(request))
        if row is None:
            return _error(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return JSONResponse(batch_object(row))

    async def list_batches(self, request: Request) -> Response:
        limit = _int_param(request.query_params.get("limit"), 20, 1, 100)
        if limit is None:
            return _error(400, "limit must be an integer between 1 and 100.", param="limit")
        rows, has_more = self.state.list_batches(
            _owner(request), request.query_params.get("after"), limit
        )
        return JSONResponse(_page([batch_object(r) for r in rows], has_more))

    async def cancel_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        row = self.state.get_batch(batch_id, _owner(request))
        if row is None:
            return _error(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        status = self.engine.cancel(batch_id)
        if status in ("completed", "failed", "expired"):
            return _error(409, f"Cannot cancel a batch with status '{status}'.")
        row = self.state.get_batch(batch_id)
        assert row is not None
        return JSONResponse(batch_object(row))

    # real time ------------------------------------------------------------------------------

    async def realtime(
        self, request: Request, endpoint: str, body: dict[str, Any] | None = None
    ) -> Response:
        """Answer one real-time request: `body`, or the request's own when not given."""
        if body is None:
            read = await _json_body(request, self.config)
            if isinstance(read, Response):
                return read
            body = read
        if endpoint == "/v1/moderations" and body.get("model") is None:
            body = {**body, "model": DEFAULT_MODERATION_MODEL}
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
        streamed, stream = body, bool(body.get("stream"))
        if stream and endpoint not in ("/v1/chat/completions", "/v1/responses"):
            return _error(400, "Unrecognized request argument supplied: stream", param="stream")
        if stream:
            body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        custom_id = request.headers.get(CUSTOM_ID_HEADER)
        digest = body_sha256(body)
        tier = answered_tier(body)
        if tier == FLEX:
            refused = self.flex.refusal(custom_id or digest)
            if refused is not None:
                return refused
        try:
            tokens = self.count_tokens(body, endpoint)
        except Exception:
            tokens = 0
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return _error(
                    400,
                    f"Invalid type for '{key}': expected an integer, but got "
                    f"{json_type_name(value)} instead.",
                    code="invalid_type",
                    param=key,
                )
        limit = next(
            (
                body[k]
                for k in ("max_completion_tokens", "max_tokens", "max_output_tokens")
                if body.get(k)
            ),
            0,
        )
        reserve = tokens + int(limit)
        decision = self.limiter(_owner(request)).check(model, reserve, self.clock.now())
        headers = dict(decision.headers)
        if not decision.allowed:
            retry = max(decision.retry_after_s, 0.001)
            headers["retry-after"] = f"{retry:.3f}"
            headers["retry-after-ms"] = str(max(1, int(retry * 1000)))
            return _error(
                429, decision.message, decision.kind, "rate_limit_exceeded", headers=headers
            )
        content_fault = None
        if self.faults.faults:
            key = custom_id or digest
            with self._lock:
                run = self._realtime_runs[key] = self._realtime_runs.get(key, 0) + 1
            content_fault = self.faults.request_fault(CONTENT_KINDS, key, run, model)
        # a slow upstream: a client that hangs up meanwhile stops neither the execution nor
        # its bill
        latency = self.flex.latency_s(tier == FLEX)
        if latency > 0:
            await asyncio.sleep(latency)
        if getattr(self.responder, "blocking", True):
            status, response = await run_in_threadpool(
                execute, self.responder, endpoint, body, content_fault, self.clock.now()
            )
        else:
            status, response = execute(
                self.responder, endpoint, body, content_fault, self.clock.now()
            )
        usage = usage_of(response) if 200 <= status < 300 else (0, 0, 0)
        if 200 <= status < 300:
            mark_tier(response, tier)
        self.state.add_ledger(
            [(custom_id, None, endpoint, model, digest, status, self.clock.now(), usage)],
            _owner(request),
            service_tier=tier,
        )
        if stream and status == 200:
            events = chat_events if endpoint == "/v1/chat/completions" else response_events
            return StreamingResponse(
                events(response, streamed), media_type="text/event-stream", headers=headers
            )
        return JSONResponse(response, status, headers=headers)

    async def chat(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/chat/completions")

    async def embeddings(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/embeddings")

    async def responses(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/responses")

    async def completions(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/completions")

    async def moderations(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/moderations")

    async def images(self, request: Request) -> Response:
        return await self.realtime(request, "/v1/images/generations")

    async def image_edits(self, request: Request) -> Response:
        return await self.media(request, "/v1/images/edits")

    async def videos(self, request: Request) -> Response:
        return await self.media(request, "/v1/videos")

    async def media(self, request: Request, endpoint: str) -> Response:
        """A media request: the SDK uploads a multipart form, a batch line sends JSON."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            read = await _json_body(request, self.config)
            if isinstance(read, Response):
                return read
            body = read
        else:
            try:
                body = await form_body(request)
            except Exception as exc:
                return _error(400, f"Could not parse the multipart form: {exc}")
        if endpoint == "/v1/videos" and not body.get("model"):
            body = {**body, "model": DEFAULT_VIDEO_MODEL}
        return await self.realtime(request, endpoint, body)

    async def models(self, request: Request) -> Response:
        names = sorted(self.config.accepted_models() or {"local"})
        return JSONResponse(_page([_model_object(n) for n in names], False))

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        accepted = self.config.accepted_models()
        if accepted is not None and name not in accepted:
            return _error(
                404,
                f"The model '{name}' does not exist",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(_model_object(name))

    # admin ----------------------------------------------------------------------------------

    async def ledger(self, request: Request) -> Response:
        since = _int_param(request.query_params.get("since"), 0, 0, 2**62)
        return JSONResponse(self.state.ledger(since or 0, _owner(request)))

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
        body = await _json_body(request, self.config)
        return body if isinstance(body, Response) else JSONResponse(body)

    async def advance_clock(self, request: Request) -> Response:
        body = await _json_body(request, self.config)
        if isinstance(body, Response):
            return body
        seconds = body.get("seconds")
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not 0 <= seconds <= MAX_CLOCK_STEP_S
        ):
            return _error(
                400,
                f"seconds must be a number from 0 to {MAX_CLOCK_STEP_S}.",
                param="seconds",
            )
        now = self.clock.advance(float(seconds))
        self.engine.wake()
        return JSONResponse({"virtual_time": now})


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "batchpilot"}


async def _json_body(request: Request, config: ServerConfig) -> dict[str, Any] | Response:
    try:
        return json_object(
            await request.body(),
            config.max_json_values,
            config.max_string_chars,
            not_object="The request body must be a JSON object.",
            unparsable=(
                "We could not parse the JSON body of your request. The body must be a JSON object."
            ),
        )
    except BodyProblem as problem:
        return _error(400, problem.message, code=problem.code, param=problem.param)


def build_app(server: ServerApp) -> ASGIApp:
    """The ASGI application of one server."""

    def route(path: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        return Route(path, handler, methods=[method])

    routes = [
        route("/v1/files", server.files.create_file, "POST"),
        route("/v1/files", server.files.list_files, "GET"),
        route("/v1/files/{file_id}", server.files.get_file, "GET"),
        route("/v1/files/{file_id}", server.files.delete_file, "DELETE"),
        route("/v1/files/{file_id}/content", server.files.file_content, "GET"),
        route("/v1/batches", server.create_batch, "POST"),
        route("/v1/batches", server.list_batches, "GET"),
        route("/v1/batches/{batch_id}", server.get_batch, "GET"),
        route("/v1/batches/{batch_id}/cancel", server.cancel_batch, "POST"),
        route("/v1/chat/completions", server.chat, "POST"),
        route("/v1/embeddings", server.embeddings, "POST"),
        route("/v1/responses", server.responses, "POST"),
        route("/v1/completions", server.completions, "POST"),
        route("/v1/moderations", server.moderations, "POST"),
        route("/v1/images/generations", server.images, "POST"),
        route("/v1/images/edits", server.image_edits, "POST"),
        route("/v1/videos", server.videos, "POST"),
        route("/v1/models", server.models, "GET"),
        route("/v1/models/{model:path}", server.model, "GET"),
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
    routes += AnthropicApi(server).routes()
    routes += GeminiApi(server).routes()
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error}
    )
    return GeminiFace(AnthropicErrors(GuardMiddleware(app, server)))
