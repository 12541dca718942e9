"""Anthropic's Messages and Message Batches APIs on the local server, beside OpenAI's.

A message batch is a batch of the shared engine on the endpoint `/v1/messages`: its inline
requests are kept as an input file, so the same clock, queue limits, faults and ledger run
it. Only the faces differ: the batch object, the results stream and the error envelope.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchpilot.server.anthropic_messages import anthropic_error, from_openai_error
from batchpilot.server.bodies import BodyProblem, json_object
from batchpilot.server.error_envelope import answer_in_envelope
from batchpilot.server.state import dumps
from batchpilot.server.web import int_param, owner_of
from batchpilot.store.database import Row

if TYPE_CHECKING:
    from batchpilot.server.clock import VirtualClock
    from batchpilot.server.config import ServerConfig
    from batchpilot.server.engine import BatchEngine
    from batchpilot.server.state import ServerState


class Host(Protocol):
    """What Anthropic's routes use of the server they are part of."""

    config: ServerConfig
    state: ServerState
    clock: VirtualClock
    engine: BatchEngine

    async def realtime(self, request: Request, endpoint: str) -> Response: ...


__all__ = ["ENDPOINT", "AnthropicApi", "AnthropicErrors"]

ENDPOINT = "/v1/messages"
MAX_REQUESTS = 100_000
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PREFIX = "/v1/messages"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(anthropic_error(status, message), status)


def _time(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


class AnthropicApi:
    """The routes of Anthropic's API over one server's state, engine and responder."""

    def __init__(self, server: Host) -> None:
        self.server = server

    def routes(self) -> list[Route]:
        return [
            Route(_PREFIX, self.message, methods=["POST"]),
            Route(_PREFIX + "/batches", self.create, methods=["POST"]),
            Route(_PREFIX + "/batches", self.list_batches, methods=["GET"]),
            Route(_PREFIX + "/batches/{batch_id}", self.retrieve, methods=["GET"]),
            Route(_PREFIX + "/batches/{batch_id}", self.delete, methods=["DELETE"]),
            Route(_PREFIX + "/batches/{batch_id}/cancel", self.cancel, methods=["POST"]),
            Route(_PREFIX + "/batches/{batch_id}/results", self.results, methods=["GET"]),
        ]

    # real time ------------------------------------------------------------------------------

    async def message(self, request: Request) -> Response:
        missing = _version_missing(request)
        if missing is not None:
            return missing
        return await self.server.realtime(request, ENDPOINT)

    # batches --------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        missing = _version_missing(request)
        if missing is not None:
            return missing
        config = self.server.config
        try:
            body = json_object(
                await request.body(),
                config.max_json_values,
                config.max_string_chars,
                not_object="The request body must be a JSON object.",
            )
        except BodyProblem as problem:
            return _error(400, problem.message)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return _error(400, "requests: Field required (a non-empty list of requests)")
        if len(requests) > min(MAX_REQUESTS, config.max_batch_lines):
            return _error(
                413, f"A batch holds at most {min(MAX_REQUESTS, config.max_batch_lines)} requests."
            )
        seen: set[str] = set()
        models: set[str] = set()
        lines: list[bytes] = []
        for index, item in enumerate(requests):
            where = f"requests.{index}"
            if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
                return _error(400, f"{where}.params: Field required")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                return _error(
                    400,
                    f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
                )
            if custom_id in seen:
                return _error(400, f"Duplicate custom_id '{custom_id}' in requests.")
            seen.add(custom_id)
            model = item["params"].get("model")
            if not isinstance(model, str) or not model:
                return _error(400, f"{where}.params.model: Field required")
            models.add(model)
            line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT}
            lines.append(dumps({**line, "body": item["params"]}).encode())
        if len(models) > 1:
            return _error(
                400,
                "The local server runs one model per batch; this batch names "
                + ", ".join(sorted(models))
                + ". (local server)",
            )
        return JSONResponse(self._batch(self._insert(request, lines)))

    def _insert(self, request: Request, lines: list[bytes]) -> Row:
        from batchpilot.server.objects import new_file_id

        state, clock = self.server.state, self.server.clock
        owner = owner_of(request)
        batch_id = "msgbatch_" + new_file_id().removeprefix("file-")
        file_id = new_file_id()
        path = state.file_path(file_id)
        data = b"\n".join(lines) + b"\n"
        path.write_bytes(data)
        now = clock.now()
        state.add_file(
            file_id, f"{batch_id}_requests.jsonl", "batch", len(data), int(now), None, owner
        )
        row = state.insert_batch(
            {
                "id": batch_id,
                "status": "validating",
                "endpoint": ENDPOINT,
                "input_file_id": file_id,
                "completion_window": "24h",
                "created_at": now,
                "expires_at": now + self.server.config.completion_window_s,
                "total": len(lines),
                "owner": owner,
            }
        )
        self.server.engine.wake()
        return row

    def _row(self, request: Request) -> Row | None:
        row = self.server.state.get_batch(request.path_params["batch_id"], owner_of(request))
        return row if row is not None and row["endpoint"] == ENDPOINT else None

    def _not_found(self, request: Request) -> Response:
        return _error(404, f"No batch found with id '{request.path_params['batch_id']}'.")

    async def retrieve(self, request: Request) -> Response:
        row = self._row(request)
        if row is None:
            return self._not_found(request)
        return JSONResponse(self._batch(row, str(request.base_url)))

    async def list_batches(self, request: Request) -> Response:
        limit = int_param(request.query_params.get("limit"), 20, 1, 1000)
        if limit is None:
            return _error(400, "limit: Input should be an integer from 1 to 1000")
        before = request.query_params.get("before_id")
        after = request.query_params.get("after_id")
        rows, has_more = self._page(owner_of(request), before, after, limit)
        data = [self._batch(row, str(request.base_url)) for row in rows]
        return JSONResponse(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    def _page(
        self, owner: str, before: str | None, after: str | None, limit: int
    ) -> tuple[list[Row], bool]:
        """Newest first: the page after `after` (older), or the one just before `before`."""
        conn = self.server.state.read()
        where, params = "owner = ? AND endpoint = ?", [owner, ENDPOINT]
        cursor = before or after
        if cursor:
            anchor = conn.execute(
                "SELECT seq FROM batches WHERE id = ? AND owner = ?", (cursor, owner)
            ).fetchone()
            if anchor is not None:
                where += " AND seq > ?" if before else " AND seq < ?"
                params.append(anchor[0])
        order = "ASC" if before else "DESC"
        rows = conn.execute(
            f"SELECT * FROM batches WHERE {where} ORDER BY seq {order} LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        page = list(rows[:limit])
        return (page[::-1] if before else page), len(rows) > limit

    async def cancel(self, request: Request) -> Response:
        row = self._row(request)
        if row is None:
            return self._not_found(request)
        status = self.server.engine.cancel(row["id"])
        if status not in ("validating", "in_progress", "finalizing", "cancelling", "cancelled"):
            return _error(400, f"Batch '{row['id']}' has already ended and cannot be canceled.")
        row = self._row(request)
        assert row is not None
        return JSONResponse(self._batch(row, str(request.base_url)))

    async def delete(self, request: Request) -> Response:
        row = self._row(request)
        if row is None:
            return self._not_found(request)
        if _processing(row["status"]) != "ended":
            return _error(
                400,
                f"Batch '{row['id']}' is still processing; cancel it first, then delete it "
                "once it has ended.",
            )
        state = self.server.state
        with state.tx() as conn:
            conn.execute("DELETE FROM batch_lines WHERE batch_id = ?", (row["id"],))
            conn.execute("DELETE FROM batches WHERE id = ?", (row["id"],))
        state.delete_file(row["input_file_id"])
        for file_id in (row["output_file_id"], row["error_file_id"]):
            if file_id:
                state.delete_file(file_id)
        return JSONResponse({"id": row["id"], "type": "message_batch_deleted"})

    async def results(self, request: Request) -> Response:
        row = self._row(request)
        if row is None:
            return self._not_found(request)
        if _processing(row["status"]) != "ended":
            return _error(400, f"Batch '{row['id']}' has not ended yet; it has no results.")

        async def stream() -> AsyncIterator[bytes]:
            for line in self._result_lines(row):
                yield line.encode() + b"\n"

        return StreamingResponse(stream(), media_type="application/binary")

    def _result_lines(self, row: Row) -> Iterator[str]:
        status = row["status"]
        unrun = {"expired": "expired", "cancelled": "canceled"}.get(status)
        if not row["admitted"]:  # failed validation, or ended before it
            errors = json.loads(row["errors_json"] or "[]")
            message = errors[0]["message"] if errors else "The batch failed. (local server)"
            error = anthropic_error(400, message)
            ended: dict[str, Any] = (
                {"type": unrun} if unrun else {"type": "errored", "error": error}
            )
            for custom_id in self._custom_ids(row):
                yield dumps({"custom_id": custom_id, "result": ended})
            return
        for _, custom_id, state, output in self.server.state.finished_lines(row["id"]):
            if state == "pending":
                if unrun is not None:
                    yield dumps({"custom_id": custom_id, "result": {"type": unrun}})
                continue
            result = _result_of(output or "")
            yield output or "" if result is None else dumps({"custom_id": custom_id, **result})

    def _custom_ids(self, row: Row) -> Iterator[str]:
        path = self.server.state.file_path(row["input_file_id"])
        if not path.is_file():
            return
        with path.open("rb") as handle:
            for raw in handle:
                if raw.strip():
                    yield str(json.loads(raw)["custom_id"])

    def _batch(self, row: Row, base_url: str = "") -> dict[str, Any]:
        processing = _processing(row["status"])
        counts = {"processing": row["total"], "succeeded": 0, "errored": 0}
        counts.update(canceled=0, expired=0)
        ended_at = None
        results_url = None
        if processing == "ended":
            counts = self._counts(row)
            status = row["status"]
            ended_at = row[f"{status}_at"]
            results_url = f"{base_url.rstrip('/')}/v1/messages/batches/{row['id']}/results"
        return {
            "id": row["id"],
            "type": "message_batch",
            "processing_status": processing,
            "request_counts": counts,
            "created_at": _time(row["created_at"]),
            "expires_at": _time(row["expires_at"]),
            "ended_at": _time(ended_at),
            "cancel_initiated_at": _time(row["cancelling_at"]),
            "archived_at": None,
            "results_url": results_url,
        }

    def _counts(self, row: Row) -> dict[str, int]:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        unrun = {"expired": "expired", "cancelled": "canceled"}.get(row["status"], "errored")
        if not row["admitted"]:
            counts[unrun] = row["total"]
            return counts
        found = (
            self.server.state.read()
            .execute(
                "SELECT state, COUNT(*) FROM batch_lines WHERE batch_id = ? GROUP BY state",
                (row["id"],),
            )
            .fetchall()
        )
        for state, count in found:
            key = {"ok": "succeeded", "failed": "errored"}.get(state, unrun)
            counts[key] += int(count)
        return counts


def _processing(status: str) -> str:
    if status in ("validating", "in_progress", "finalizing"):
        return "in_progress"
    return "canceling" if status == "cancelling" else "ended"


def _result_of(output: str) -> dict[str, Any] | None:
    """The `result` of one engine output line; None for a line that cannot be read (a fault
    that garbles it, passed on as it is)."""
    try:
        item = json.loads(output)
    except ValueError:
        return None
    response = item.get("response")
    if item.get("error") is not None or not isinstance(response, dict):
        message = str((item.get("error") or {}).get("message") or "The request failed.")
        error = anthropic_error(504 if "timed out" in message else 500, message)
        return {"result": {"type": "errored", "error": error}}
    status = int(response.get("status_code") or 500)
    body = response.get("body")
    if 200 <= status < 300:
        return {"result": {"type": "succeeded", "message": body}}
    error = from_openai_error(status, body, response.get("request_id"))
    return {"result": {"type": "errored", "error": error}}


def _version_missing(request: Request) -> Response | None:
    if request.headers.get("anthropic-version"):
        return None
    return _error(400, "anthropic-version: header is required")


class AnthropicErrors:
    """Answers errors on Anthropic's paths in Anthropic's envelope, whichever part of the
    server (the key guard, injected faults, the shared real-time route) made them, and names
    the request in a `request-id` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        await answer_in_envelope(
            self.app, scope, receive, send, from_openai_error, _with_anthropic_headers
        )


def _with_anthropic_headers(message: Message) -> Message:
    """The response's rate-limit headers also under Anthropic's names, and its request id."""
    headers = list(message.get("headers", []))
    names = {
        b"x-ratelimit-limit-requests": b"anthropic-ratelimit-requests-limit",
        b"x-ratelimit-remaining-requests": b"anthropic-ratelimit-requests-remaining",
        b"x-ratelimit-reset-requests": b"anthropic-ratelimit-requests-reset",
        b"x-ratelimit-limit-tokens": b"anthropic-ratelimit-tokens-limit",
        b"x-ratelimit-remaining-tokens": b"anthropic-ratelimit-tokens-remaining",
        b"x-ratelimit-reset-tokens": b"anthropic-ratelimit-tokens-reset",
        b"x-request-id": b"request-id",
    }
    for key, value in list(headers):
        name = names.get(key.lower())
        if name is not None and name.endswith(b"-reset"):
            value = _reset_time(value.decode("latin-1")).encode("latin-1")
        if name is not None:
            headers.append((name, value))
    return {**message, "headers": headers}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _reset_time(duration: str) -> str:
    """A reset given as a duration (`6m0s`, `1.5s`) as Anthropic gives it: an RFC 3339 time."""
    seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(duration))
    return _time(time.time() + seconds) or duration
