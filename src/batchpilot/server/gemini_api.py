"""Gemini's generateContent and Batch Mode on the local server, beside OpenAI's and Anthropic's.

A Gemini batch is a batch of the shared engine on the endpoint GEMINI_ENDPOINT: its requests
(inline, or the `key` + `request` lines of an uploaded file) are kept as an input file, so the
same clock, queue limits, faults and ledger run it. Only the faces differ: the batch (an
operation whose metadata is a GenerateContentBatch), its responses (inline, or a generated
file) and the error envelope.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from batchpilot.server.bodies import BodyProblem, json_object
from batchpilot.server.execution import GEMINI_ENDPOINT
from batchpilot.server.gemini_content import gemini_error, rpc_status
from batchpilot.server.gemini_files import PREFIX, GeminiFiles, Host, file_state_id, rfc3339
from batchpilot.server.state import dumps
from batchpilot.server.web import int_param, owner_of
from batchpilot.store.database import Row

__all__ = ["GeminiApi"]

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_STATES = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
}
_ENDED = ("completed", "failed", "expired", "cancelled")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(gemini_error(status, message), status)


class GeminiApi:
    """The routes of Gemini's API over one server's state, engine and responder."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.files = GeminiFiles(server, self)

    def routes(self) -> list[Route]:
        base = PREFIX + "/{version}"
        return [
            Route(base + "/models/{target}", self.model_call, methods=["POST"]),
            Route(base + "/batches", self.list_batches, methods=["GET"]),
            Route(base + "/batches/{target}", self.get_batch, methods=["GET"]),
            Route(base + "/batches/{target}", self.batch_call, methods=["POST"]),
            Route(base + "/batches/{target}", self.delete, methods=["DELETE"]),
            *self.files.routes(),
        ]

    async def model_call(self, request: Request) -> Response:
        model, _, method = request.path_params["target"].partition(":")
        if method == "generateContent":
            return await self.generate(request, model)
        if method == "batchGenerateContent":
            return await self.create(request, model)
        return _error(404, f"Method {method!r} is not served by the local server.")

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        config = self.server.config
        try:
            return json_object(
                await request.body(),
                config.max_json_values,
                config.max_string_chars,
                not_object="Invalid JSON payload received: the body must be an object.",
            )
        except BodyProblem as problem:
            return _error(400, problem.message)

    # real time ------------------------------------------------------------------------------

    async def generate(self, request: Request, model: str) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        return await self.server.realtime(request, GEMINI_ENDPOINT, {**body, "model": model})

    # batches --------------------------------------------------------------------------------

    async def create(self, request: Request, model: str) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        batch = body.get("batch")
        if not isinstance(batch, dict):
            return _error(400, "* batch: a GenerateContentBatch is required")
        source = batch.get("inputConfig") or batch.get("input_config")
        if not isinstance(source, dict):
            return _error(400, "* batch.input_config: input_config is required")
        owner = owner_of(request)
        if source.get("fileName") or source.get("file_name"):
            name = str(source.get("fileName") or source.get("file_name"))
            items = self._file_items(name, owner)
            if isinstance(items, Response):
                return items
            inline = False
        else:
            found = (source.get("requests") or {}).get("requests")
            if not isinstance(found, list) or not found:
                return _error(400, "* batch.input_config.requests: requests must not be empty")
            items = [(None, item) for item in found]
            inline = True
        limit = self.server.config.max_batch_lines
        if len(items) > limit:
            return _error(400, f"A batch holds at most {limit} requests. (local server)")
        lines: list[bytes] = []
        seen: set[str] = set()
        for index, (key, item) in enumerate(items):
            where = f"batch.input_config.requests[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                return _error(400, f"* {where}.request: request is required")
            metadata = item.get("metadata") if inline else None
            if metadata is not None and not isinstance(metadata, dict):
                return _error(400, f"* {where}.metadata: Invalid value")
            custom_id = key if key is not None else (metadata or {}).get("key")
            if not isinstance(custom_id, str) or custom_id in seen:
                custom_id = f"#{index}"
            seen.add(custom_id)
            line: dict[str, Any] = {"custom_id": custom_id, "method": "POST"}
            line["url"] = GEMINI_ENDPOINT
            line["body"] = {**item["request"], "model": model.removeprefix("models/")}
            line["gemini"] = {"key": key} if key is not None else {"metadata": metadata}
            lines.append(dumps(line).encode())
        display = batch.get("displayName") or batch.get("display_name") or ""
        source = "inline" if inline else "file"
        meta = {"gemini_display_name": str(display), "gemini_source": source}
        row = self._insert(owner, model, lines, meta)
        return JSONResponse(self.operation(row))

    def _file_items(self, name: str, owner: str) -> list[tuple[str | None, Any]] | Response:
        path = self.server.state.file_path(file_state_id(name))
        if self.server.state.get_file(file_state_id(name), owner) is None or not path.is_file():
            return _error(404, f"File {name} not found.")
        items: list[tuple[str | None, Any]] = []
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    item = json.loads(raw)
                except ValueError:
                    return _error(400, f"{name}: line {number} is not valid JSON.")
                if not isinstance(item, dict):
                    return _error(400, f"{name}: line {number} is not a JSON object.")
                key = item.get("key")
                items.append((str(key) if key is not None else str(len(items)), item))
        if not items:
            return _error(400, f"{name}: the file holds no requests.")
        return items

    def _insert(self, owner: str, model: str, lines: list[bytes], meta: dict[str, str]) -> Row:
        """The batch as the engine's, its Gemini face kept as string metadata (which OpenAI's
        listing of the same project can show)."""
        state, clock = self.server.state, self.server.clock
        batch_id = "".join(secrets.choice(_ALNUM) for _ in range(24))
        file_id = f"gbatch-{batch_id}"
        data = b"\n".join(lines) + b"\n"
        state.file_path(file_id).write_bytes(data)
        now = clock.now()
        state.add_file(
            file_id, f"{batch_id}_requests.jsonl", "batch", len(data), int(now), None, owner
        )
        row = state.insert_batch(
            {
                "id": batch_id,
                "status": "validating",
                "endpoint": GEMINI_ENDPOINT,
                "input_file_id": file_id,
                "completion_window": "24h",
                "model": model.removeprefix("models/"),
                "metadata_json": json.dumps(meta),
                "created_at": now,
                "expires_at": now + self.server.config.completion_window_s,
                "total": len(lines),
                "owner": owner,
            }
        )
        self.server.engine.wake()
        return row

    def row(self, target: str, owner: str) -> Row | None:
        row = self.server.state.get_batch(target.removeprefix("batches/"), owner)
        return row if row is not None and row["endpoint"] == GEMINI_ENDPOINT else None

    def _not_found(self, target: str) -> Response:
        return _error(404, f"Batch batches/{target} not found.")

    async def get_batch(self, request: Request) -> Response:
        target = request.path_params["target"]
        row = self.row(target, owner_of(request))
        if row is None:
            return self._not_found(target)
        return JSONResponse(self.operation(row))

    async def batch_call(self, request: Request) -> Response:
        target, _, method = request.path_params["target"].partition(":")
        if method != "cancel":
            return _error(404, f"Method {method!r} is not served by the local server.")
        row = self.row(target, owner_of(request))
        if row is None:
            return self._not_found(target)
        status = self.server.engine.cancel(row["id"])
        if status in ("completed", "failed", "expired"):
            return _error(400, f"Batch batches/{row['id']} has already ended.")
        return JSONResponse({})

    async def delete(self, request: Request) -> Response:
        target = request.path_params["target"]
        row = self.row(target, owner_of(request))
        if row is None:
            return self._not_found(target)
        if row["status"] not in _ENDED:
            return _error(400, f"Batch batches/{row['id']} is still running; cancel it first.")
        state = self.server.state
        with state.tx() as conn:
            conn.execute("DELETE FROM batch_lines WHERE batch_id = ?", (row["id"],))
            conn.execute("DELETE FROM batches WHERE id = ?", (row["id"],))
        for file_id in (row["input_file_id"], row["output_file_id"], row["error_file_id"]):
            if file_id:
                state.delete_file(file_id)
        return JSONResponse({})

    async def list_batches(self, request: Request) -> Response:
        size = int_param(request.query_params.get("pageSize"), 50, 1, 1000)
        if size is None:
            return _error(400, "* page_size: Invalid value (an integer from 1 to 1000)")
        token = request.query_params.get("pageToken") or ""
        conn = self.server.state.read()
        where, params = "owner = ? AND endpoint = ?", [owner_of(request), GEMINI_ENDPOINT]
        if token.isdigit():
            where += " AND seq < ?"
            params.append(token)
        rows = conn.execute(
            f"SELECT * FROM batches WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, size + 1)
        ).fetchall()
        page = list(rows[:size])
        answer: dict[str, Any] = {"operations": [self.operation(r) for r in page]}
        if len(rows) > size:
            answer["nextPageToken"] = str(page[-1]["seq"])
        return JSONResponse(answer)

    # the batch's face -------------------------------------------------------------------------

    def operation(self, row: Row) -> dict[str, Any]:
        meta = json.loads(row["metadata_json"] or "{}")
        status = row["status"]
        ended = status in _ENDED
        counts = self._counts(row)
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "model": f"models/{row['model']}",
            "displayName": meta.get("gemini_display_name", ""),
            "createTime": rfc3339(row["created_at"]),
            "updateTime": rfc3339(self.server.clock.now()),
            "batchStats": {k: str(v) for k, v in counts.items()},
            "state": _STATES.get(status, "BATCH_STATE_UNSPECIFIED"),
            "name": f"batches/{row['id']}",
        }
        answer: dict[str, Any] = {"name": f"batches/{row['id']}", "metadata": metadata}
        if ended:
            metadata["endTime"] = rfc3339(row[f"{status}_at"])
            output: dict[str, Any]
            if meta.get("gemini_source") == "inline":
                responses = [dict(r) for r in self.responses(row)]
                output = {"inlinedResponses": {"inlinedResponses": responses}}
            else:
                output = {"responsesFile": f"files/batch-{row['id']}"}
            metadata["output"] = output
            answer["done"] = True
            if status == "failed":
                answer["error"] = self.failure(row)
            answer["response"] = {"@type": _BATCH_TYPE.replace("Batch", "BatchOutput"), **output}
        return answer

    def _counts(self, row: Row) -> dict[str, int]:
        total = int(row["total"])
        found = dict(
            self.server.state.read()
            .execute(
                "SELECT state, COUNT(*) FROM batch_lines WHERE batch_id = ? GROUP BY state",
                (row["id"],),
            )
            .fetchall()
        )
        ok, failed = int(found.get("ok", 0)), int(found.get("failed", 0))
        if row["status"] in _ENDED:
            failed = total - ok
        return {
            "requestCount": total,
            "successfulRequestCount": ok,
            "failedRequestCount": failed,
            "pendingRequestCount": total - ok - failed,
        }

    def responses(self, row: Row) -> Iterator[dict[str, Any]]:
        """Each request's response or error, in input order: as inline responses
        (`metadata`) or as the lines of the responses file (`key`)."""
        status = row["status"]
        unrun = {
            "expired": rpc_status(504, "The batch expired before this request ran."),
            "cancelled": rpc_status(499, "The batch was cancelled before this request ran."),
        }.get(status)
        inputs = self._inputs(row)
        if not row["admitted"]:
            failure = unrun or self.failure(row)
            for gemini in inputs:
                yield {**_label(gemini), "error": failure}
            return
        lines = {
            line_no: (state, output)
            for line_no, _, state, output in self.server.state.finished_lines(row["id"])
        }
        for line_no, gemini in enumerate(inputs, start=1):
            state, output = lines.get(line_no, ("pending", None))
            if state == "pending":
                error = unrun or rpc_status(500, "The request did not run. (local server)")
                yield {**_label(gemini), "error": error}
                continue
            yield {**_label(gemini), **_outcome(output or "")}

    def failure(self, row: Row) -> dict[str, Any]:
        """Why a batch failed before it ran, as a google.rpc.Status: a full queue is
        RESOURCE_EXHAUSTED, as Gemini answers it."""
        errors = json.loads(row["errors_json"] or "[]")
        first = errors[0] if errors else {}
        message = str(first.get("message") or "The batch failed. (local server)")
        full = first.get("code") == "token_limit_exceeded"
        return rpc_status(429 if full else 400, message)

    def _inputs(self, row: Row) -> list[dict[str, Any]]:
        path = self.server.state.file_path(row["input_file_id"])
        found: list[dict[str, Any]] = []
        if path.is_file():
            with path.open("rb") as handle:
                found = [json.loads(raw).get("gemini") or {} for raw in handle if raw.strip()]
        return found


def _label(gemini: dict[str, Any]) -> dict[str, Any]:
    if gemini.get("key") is not None:
        return {"key": gemini["key"]}
    return {"metadata": gemini["metadata"]} if gemini.get("metadata") else {}


def _outcome(output: str) -> dict[str, Any]:
    """The `response` or `error` of one engine output line."""
    try:
        item = json.loads(output)
    except ValueError:
        return {"error": rpc_status(500, "The response could not be read. (local server fault)")}
    response = item.get("response")
    if item.get("error") is not None or not isinstance(response, dict):
        message = str((item.get("error") or {}).get("message") or "The request failed.")
        return {"error": rpc_status(504 if "timed out" in message else 500, message)}
    status = int(response.get("status_code") or 500)
    body = response.get("body")
    if 200 <= status < 300 and isinstance(body, dict):
        return {"response": body}
    error = body.get("error") if isinstance(body, dict) else None
    message = str((error or {}).get("message") or "The request failed.")
    return {"error": rpc_status(status, message)}
