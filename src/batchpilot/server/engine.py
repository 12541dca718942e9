"""The batch engine: a worker thread that validates, runs, finalizes, expires and cancels batches.

Every step is one transaction in the server state, so a server killed at any point resumes each
batch where its last committed step left it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from batchpilot.server.clock import VirtualClock
from batchpilot.server.config import ServerConfig
from batchpilot.server.execution import body_sha256, execute, http_error_body, usage_of
from batchpilot.server.faults import CONTENT_KINDS, LINE_KINDS, Fault, FaultPlan
from batchpilot.server.responders.base import Responder
from batchpilot.server.state import ACTIVE_STATUSES, LedgerRow, LineRow, ServerState, dumps
from batchpilot.server.validation import validate_input_file
from batchpilot.store.database import Row

__all__ = ["BatchEngine"]

log = logging.getLogger(__name__)

CHUNK_LINES = 2000
CHUNK_SECONDS = 0.25
# A batch whose step raises this many times in a row fails, so it cannot stall the others.
MAX_STEP_FAILURES = 3


def _derived_id(prefix: str, *parts: object, length: int = 24) -> str:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return prefix + digest[:length]


class BatchEngine:
    """Moves every active batch forward according to the virtual clock."""

    def __init__(
        self,
        state: ServerState,
        clock: VirtualClock,
        config: ServerConfig,
        responder: Responder,
        faults: FaultPlan,
        count_tokens: Callable[[dict[str, Any], str], int],
    ) -> None:
        self.state = state
        self.clock = clock
        self.config = config
        self.responder = responder
        self.faults = faults
        self.count_tokens = count_tokens
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = (
            ThreadPoolExecutor(config.responder_threads, thread_name_prefix="batchpilot-responder")
            if config.responder_threads > 1
            else None
        )
        self._has_line_faults = any(
            f.kind in LINE_KINDS | CONTENT_KINDS or f.kind == "all_lines_fail"
            for f in faults.faults
        )
        self.last_error: str | None = None
        self._step_failures: dict[str, int] = {}

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="batchpilot-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.state.close()

    def cancel(self, batch_id: str) -> str | None:
        """Move a batch that is still running to cancelling and wake the engine to end it;
        returns the status the batch had (None: no such batch). A batch that moved meanwhile
        is read again."""
        while True:
            row = self.state.get_batch(batch_id)
            if row is None:
                return None
            status = str(row["status"])
            if status not in ("validating", "in_progress", "finalizing"):
                return status
            change = {"status": "cancelling", "cancelling_at": self.clock.now()}
            if self.state.update_batch(batch_id, change, expect_status=status):
                self.wake()
                return status

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        last_saved = 0.0
        while not self._stop.is_set():
            busy = False
            try:
                busy = self.tick()
            except Exception as exc:
                self.last_error = repr(exc)
                log.exception("batch engine step failed; retrying")
                time.sleep(0.5)
            if time.monotonic() - last_saved > 1.0:
                self.state.set_meta("virtual_time", repr(self.clock.now()))
                last_saved = time.monotonic()
            if not busy:
                self._wake.wait(0.02)
                self._wake.clear()
        self.state.set_meta("virtual_time", repr(self.clock.now()))

    # one step -------------------------------------------------------------------------------

    def tick(self) -> bool:
        """Advance every active batch once; True when work remains that is due now."""
        busy = False
        for row in self.state.batches_in(ACTIVE_STATUSES):
            if self._stop.is_set():
                break
            try:
                busy |= self._advance(row, self.clock.now())
            except Exception as exc:
                busy |= self._step_failed(row, exc)
            else:
                self._step_failures.pop(row["id"], None)
        return busy

    def _step_failed(self, row: Row, exc: Exception) -> bool:
        """Count a failed step of one batch; the batch fails once it keeps failing."""
        batch_id = row["id"]
        log.exception("batch %s: step failed", batch_id)
        self.last_error = f"batch {batch_id}: {type(exc).__name__}"
        failures = self._step_failures[batch_id] = self._step_failures.get(batch_id, 0) + 1
        if failures < MAX_STEP_FAILURES:
            return False
        self._step_failures.pop(batch_id, None)
        error = {
            "code": "server_error",
            "message": f"The local server could not process this batch ({type(exc).__name__}); "
            "see the server log. (local server)",
            "param": None,
            "line": None,
        }
        self.state.update_batch(
            batch_id,
            {"status": "failed", "failed_at": self.clock.now(), "errors_json": dumps([error])},
            expect_status=row["status"],
        )
        self.state.release_file(row["input_file_id"])
        return True

    def _faults_of(self, row: Row) -> list[Fault]:
        return [Fault.model_validate(item) for item in json.loads(row["faults_json"])]

    def _fault(self, row: Row, kind: str) -> Fault | None:
        return next((f for f in self._faults_of(row) if f.kind == kind), None)

    def _advance(self, row: Row, now: float) -> bool:
        status, batch_id = row["status"], row["id"]
        if status == "validating":
            if not row["validated"]:
                self._validate(row)
                return True
            if now >= row["created_at"] + self.config.validation_delay_s:
                if row["errors_json"]:
                    self.state.update_batch(
                        batch_id, {"status": "failed", "failed_at": now}, expect_status=status
                    )
                else:
                    self.state.update_batch(
                        batch_id,
                        {"status": "in_progress", "in_progress_at": now},
                        expect_status=status,
                    )
                return True
            return False
        if status == "in_progress":
            return self._progress(row, now)
        if status == "finalizing":
            stall = self._fault(row, "finalizing_stall")
            delay = self.config.finalizing_delay_s + (stall.seconds if stall else 0.0)
            if now >= row["finalizing_at"] + delay:
                self._finish(row, "completed", now)
                return True
            return False
        if status == "cancelling" and now >= row["cancelling_at"] + self.config.cancel_delay_s:
            self._finish(row, "cancelled", now)
            return True
        return False

    def _validate(self, row: Row) -> None:
        batch_id = row["id"]
        file_row = self.state.get_file(row["input_file_id"], row["owner"])
        if file_row is None or file_row["purpose"] != "batch":
            error = {
                "code": "invalid_request",
                "message": f"Cannot find file {row['input_file_id']}, or it was not uploaded "
                "with purpose 'batch'.",
                "param": "file_id",
                "line": None,
            }
            self.state.update_batch(batch_id, {"validated": 1, "errors_json": dumps([error])})
            return
        result = validate_input_file(
            self.state.file_path(row["input_file_id"]),
            row["endpoint"],
            accepted_models=self.config.accepted_models(),
            max_bytes=self.config.max_batch_file_bytes,
            max_lines=self.config.max_batch_lines,
            max_line_bytes=self.config.max_json_bytes,
            max_string_chars=self.config.max_string_chars,
            max_values=self.config.max_json_values,
            count_tokens=self.count_tokens,
            tokens_per_s=self.config.processing_tokens_per_s,
            per_request_s=self.config.per_request_s,
        )
        errors = result.errors
        model = result.model
        metadata = json.loads(row["metadata_json"]) if row["metadata_json"] else {}
        faults = self.faults.batch_faults(row["seq"], model, metadata) if self.faults.faults else []
        if not errors and model is not None:
            limit = self.config.queue_limits.get(model)
            enqueued = self.state.enqueued_tokens(model, batch_id, row["owner"])
            if limit is not None and enqueued + result.input_tokens > limit:
                errors = [
                    {
                        "code": "token_limit_exceeded",
                        "message": f"Enqueued token limit reached for {model} in organization "
                        f"org-local. Limit: {limit:,} enqueued tokens. Please try again once "
                        "some in_progress batches have been completed.",
                        "param": None,
                        "line": None,
                    }
                ]
        failure = next((f for f in faults if f.kind == "batch_fail"), None)
        if not errors and failure is not None:
            errors = [
                {
                    "code": failure.code or "server_error",
                    "message": failure.message or "The batch failed. (local server fault)",
                    "param": None,
                    "line": None,
                }
            ]
        values: dict[str, Any] = {
            "validated": 1,
            "model": model,
            "faults_json": dumps([f.model_dump() for f in faults]),
        }
        if errors:
            values["errors_json"] = dumps(errors)
            self.state.update_batch(batch_id, values)
            return
        values.update(admitted=1, enqueued_tokens=result.input_tokens, total=len(result.lines))
        self.state.admit_lines(batch_id, result.lines, values)

    # running lines --------------------------------------------------------------------------

    def _progress(self, row: Row, now: float) -> bool:
        batch_id = row["id"]
        expire = self._fault(row, "batch_expire")
        expire_after = None if expire is None else int(expire.after_fraction * row["total"])
        done = row["completed"] + row["failed"]
        # Due times count from when the batch was due to start, and every line due inside the
        # window runs before the batch may expire: time the engine itself spends (validating, or
        # running lines at a high time scale) never pushes a line out of the window.
        start = min(row["in_progress_at"], row["created_at"] + self.config.validation_delay_s)
        window = row["expires_at"] - start
        elapsed = now - start if now < row["expires_at"] else math.nextafter(window, -math.inf)
        started = time.monotonic()
        no_line_due = False
        with self.state.file_path(row["input_file_id"]).open("rb") as handle:
            while time.monotonic() - started < CHUNK_SECONDS:
                limit = (
                    CHUNK_LINES if expire_after is None else min(CHUNK_LINES, expire_after - done)
                )
                lines = self.state.due_lines(batch_id, elapsed, limit) if limit > 0 else []
                if not lines:
                    no_line_due = True
                    break
                current = self.state.get_batch(batch_id)
                if current is None or current["status"] != "in_progress":
                    return True
                done += self._run_lines(row, handle, lines)
        if not no_line_due:
            return True
        if expire_after is None or done < expire_after:
            if self.state.pending_count(batch_id) == 0:
                self.state.update_batch(
                    batch_id,
                    {"status": "finalizing", "finalizing_at": now},
                    expect_status="in_progress",
                )
                return True
            if now < row["expires_at"]:
                return False
        current = self.state.get_batch(batch_id)
        if current is not None and current["status"] == "in_progress":
            self._finish(current, "expired", now)
        return True

    def _run_lines(self, row: Row, handle: Any, lines: list[LineRow]) -> int:
        batch_id, endpoint = row["id"], row["endpoint"]
        all_fail = self._fault(row, "all_lines_fail")

        def run(line: LineRow) -> tuple[int, str, str, LedgerRow, int, int]:
            handle_lock.acquire()
            try:
                handle.seek(line.offset)
                raw = handle.read(line.length)
            finally:
                handle_lock.release()
            body = json.loads(raw)["body"]
            model = body.get("model")
            execution = 1
            line_fault = content_fault = None
            if self._has_line_faults:
                execution = self.state.executions(line.custom_id) + 1
                line_fault = self.faults.request_fault(LINE_KINDS, line.custom_id, execution, model)
                content_fault = self.faults.request_fault(
                    CONTENT_KINDS, line.custom_id, execution, model
                )
            if all_fail is not None:
                line_fault = all_fail
            request_id = _derived_id("req_", batch_id, line.line_no, execution, length=32)
            out_id = _derived_id("batch_req_", batch_id, line.line_no, length=32)
            usage = (0, 0, 0)
            if line_fault is not None and line_fault.kind in ("line_error", "all_lines_fail"):
                status, response = line_fault.status, http_error_body(line_fault)
            elif line_fault is not None and line_fault.kind == "line_timeout":
                status, response = 0, {}
            else:
                status, response = execute(
                    self.responder, endpoint, body, content_fault, self.clock.now()
                )
                usage = usage_of(response)
            output: dict[str, Any]
            if status == 0:
                output = {
                    "id": out_id,
                    "custom_id": line.custom_id,
                    "response": None,
                    "error": {
                        "code": "request_timeout",
                        "message": "The request timed out before a response was produced. "
                        "(local server fault)",
                    },
                }
            else:
                output = {
                    "id": out_id,
                    "custom_id": line.custom_id,
                    "response": {"status_code": status, "request_id": request_id, "body": response},
                    "error": None,
                }
            text = dumps(output)
            ok = 200 <= status < 300
            if ok and line_fault is not None and line_fault.kind == "garbled_line":
                text = text[: len(text) // 3] + "\x00<<garbled>>" + text[len(text) // 2 :]
            elif ok and line_fault is not None and line_fault.kind == "truncated_line":
                text = text[: len(text) // 2]
            ledger = (
                line.custom_id,
                batch_id,
                endpoint,
                model,
                body_sha256(body),
                status,
                self.clock.now(),
                usage,
            )
            return line.line_no, "ok" if ok else "failed", text, ledger, usage[0], usage[2]

        handle_lock = threading.Lock()
        if self._pool is not None:
            outcomes = list(self._pool.map(run, lines))
        else:
            outcomes = [run(line) for line in lines]
        ok_count = sum(1 for o in outcomes if o[1] == "ok")
        self.state.record_results(
            batch_id,
            [(o[0], o[1], o[2]) for o in outcomes],
            [o[3] for o in outcomes],
            (
                ok_count,
                len(outcomes) - ok_count,
                sum(o[4] for o in outcomes),
                sum(o[5] for o in outcomes),
            ),
            owner=row["owner"],
        )
        return len(outcomes)

    # finishing ------------------------------------------------------------------------------

    def _finish(self, row: Row, status: str, now: float) -> None:
        """Write output and error files, then move the batch to its terminal `status`."""
        batch_id = row["id"]
        reason = {
            "expired": (
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            ),
            "cancelled": ("batch_cancelled", "This request was cancelled before it was executed."),
        }.get(status)
        out_id = _derived_id("file-", batch_id, "output")
        err_id = _derived_id("file-", batch_id, "error")
        out_path, err_path = self.state.file_path(out_id), self.state.file_path(err_id)
        ok_lines = error_lines = unrun = 0
        tmp_out, tmp_err = out_path.with_suffix(".part"), err_path.with_suffix(".part")
        with tmp_out.open("w", encoding="utf-8") as out, tmp_err.open("w", encoding="utf-8") as err:
            for line_no, custom_id, state, output in self.state.finished_lines(batch_id):
                if state == "ok":
                    out.write(output or "")
                    out.write("\n")
                    ok_lines += 1
                    continue
                if state == "pending":
                    if reason is None:
                        continue
                    unrun += 1
                    output = dumps(
                        {
                            "id": _derived_id("batch_req_", batch_id, line_no, length=32),
                            "custom_id": custom_id,
                            "response": None,
                            "error": {"code": reason[0], "message": reason[1]},
                        }
                    )
                err.write(output or "")
                err.write("\n")
                error_lines += 1
        created = int(now)
        values: dict[str, Any] = {"status": status, f"{status}_at": now}
        for count, path, tmp, file_id, kind in (
            (ok_lines, out_path, tmp_out, out_id, "output"),
            (error_lines, err_path, tmp_err, err_id, "error"),
        ):
            if count:
                tmp.replace(path)
                self.state.add_file(
                    file_id,
                    f"{batch_id}_{kind}.jsonl",
                    "batch_output",
                    path.stat().st_size,
                    created,
                    created + seconds if (seconds := row["output_expires_after_s"]) else None,
                    owner=row["owner"],
                )
                values[f"{kind}_file_id"] = file_id
            else:
                tmp.unlink(missing_ok=True)
        if unrun:
            values["failed"] = row["failed"] + unrun
        self.state.update_batch(batch_id, values, expect_status=row["status"])
        self.state.release_file(row["input_file_id"])
        self.wake()
