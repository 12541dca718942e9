"""Reading a finished batch: every line matched by custom_id, every failure found.

Failures hide in several places: the error file, lines in either file whose `status_code` is
4xx/5xx with a null `error`, `response: null` lines with an error code, garbled lines, and
requests missing from both files. Each becomes an Outcome with a reason.

An answered line, nearly every line of a batch, is read the short way: its id, its status and
its body's `usage` are decoded into a fixed shape, and the body is kept as the bytes it came
as, checked as JSON but not made into Python objects, which is then what the store keeps. Any
other line, or one the short way cannot take, is read whole.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import orjson
from orjson import Fragment

from batchpilot.jsontext import MAX_NESTING, few_brackets, nesting_within
from batchpilot.providers.retry import retryable_status
from batchpilot.store import Outcome, PendingRequest, RequestState

__all__ = [
    "LineResult",
    "RetryPolicy",
    "classify",
    "collector_paused",
    "parse_line",
    "read_lines",
    "read_whole_line",
]

NOT_RUN_CODES = frozenset({"batch_expired", "batch_cancelled"})
RETRYABLE_CODES = frozenset({"request_timeout", *NOT_RUN_CODES})
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"((?:[^"\\]|\\.)*)"')


class LineResult(NamedTuple):
    """One line of an output or error file, as far as it could be read (a tuple: there is
    one for every line of a batch's files)."""

    custom_id: str
    ok: bool
    body: dict[str, Any] | None
    """The answer's body, read; None for a failure, and for an answer read the short way."""
    error: str | None
    retryable: bool
    ran: bool
    unread: bool = False
    """It ran, but what it used cannot be read (a garbled line): it may have been billed."""
    raw: bytes | None = None
    """An answer read the short way: its body's JSON as it came, one JSON object."""
    usage: dict[str, Any] | None = None
    """An answer read the short way: its body's `usage`."""
    choices: list[_Choice] | None = None
    """An answer read the short way: its body's `choices`, as far as a check reads them."""


class _Response(msgspec.Struct):
    status_code: int
    body: msgspec.Raw


class _Line(msgspec.Struct):
    """What the short way reads of a line (other fields are checked as JSON and skipped)."""

    custom_id: str
    response: _Response | None = None


class _Message(msgspec.Struct):
    content: Any = None
    refusal: Any = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    finish_reason: Any = None
    text: Any = None


class _Body(msgspec.Struct):
    """What the short way reads of an answer's body: what it used, and what a check reads
    of a chat completion (`answer_of`)."""

    usage: dict[str, Any] | None = None
    choices: list[_Choice] | None = None


_read_line = msgspec.json.Decoder(_Line).decode
_read_body = msgspec.json.Decoder(_Body).decode
# a text that is not UTF-8 (a download cut or garbled) is refused by the decoder as such
# (and text nested deeper than it goes, which the whole way reads or refuses)
_SHORT_WAY_REFUSED = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    UnicodeDecodeError,
    RecursionError,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3

    def next_state(self, request: PendingRequest, retryable: bool, ran: bool) -> str:
        if not retryable:
            return RequestState.FAILED
        if not ran:
            return RequestState.PENDING
        return (
            RequestState.PENDING
            if request.attempts + 1 < self.max_attempts
            else (RequestState.FAILED)
        )


def _error_text(code: Any, message: Any) -> str:
    return f"{code}: {message}" if code else str(message)


def parse_line(raw: bytes) -> LineResult | None:
    """Read one line; None for blank lines."""
    return _answered(raw) or read_whole_line(raw)


def _answered(raw: bytes, new: Callable[..., Any] = tuple.__new__) -> LineResult | None:
    """An answered line read the short way (None: not one, or not one it can take)."""
    try:
        line = _read_line(raw)
        response = line.response
        if response is not None and 200 <= response.status_code < 300:
            body = bytes(response.body)
            # the body is kept as it came: the parts skipped unread must be UTF-8 too
            # and, with many brackets, it is read whole, which sees how deep they nest
            if body[:1] == b"{" and (body.isascii() or body.decode()) and few_brackets(body):
                read = _read_body(body)
                fields = (line.custom_id, True, None, None, False, True, False, body)
                # made as it is: a named tuple's own constructor is slow, and there is one a line
                made: LineResult = new(LineResult, (*fields, read.usage, read.choices))
                return made
    except _SHORT_WAY_REFUSED:
        pass
    return None


def read_whole_line(raw: bytes) -> LineResult | None:
    """Read one line as a whole, whatever it holds; None for blank lines."""
    if not raw.strip():
        return None
    try:
        line = orjson.loads(raw)
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            raise ValueError("no custom_id")
    except ValueError:
        found = _CUSTOM_ID.search(raw)
        try:
            custom_id = None if found is None else json.loads(b'"' + found.group(1) + b'"')
        except ValueError:  # not UTF-8, or an escape cut short
            custom_id = None
        if not isinstance(custom_id, str):
            return None  # its request cannot be told: it is found missing, and tried again
        return LineResult(
            custom_id,
            False,
            None,
            "garbled_line: the result line was not valid JSON",
            True,
            True,
            unread=True,
        )
    custom_id = line["custom_id"]
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        if isinstance(status, int) and 200 <= status < 300 and isinstance(body, dict):
            if not nesting_within(raw, line):
                text = f"invalid_answer: the answer nests more than {MAX_NESTING} levels deep"
                return LineResult(custom_id, False, None, text, True, True)
            return LineResult(custom_id, True, body, None, False, True)
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            text = _error_text(detail.get("code") or detail.get("type"), detail.get("message"))
        else:
            text = _error_text(None, f"no usable body (status {status})")
        retryable = isinstance(status, int) and retryable_status(status)
        return LineResult(custom_id, False, None, f"http {status}: {text}", retryable, True)
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        return LineResult(
            custom_id,
            False,
            None,
            _error_text(code, error.get("message")),
            code in RETRYABLE_CODES,
            code not in NOT_RUN_CODES,
        )
    return LineResult(custom_id, False, None, "unreadable result line", True, True, unread=True)


def _checked_part(choices: list[_Choice] | None) -> dict[str, Any] | None:
    """What a check reads of a chat completion read the short way (`answer_of` reads its
    first choice alone), as a body; None for another body, which a check is given whole."""
    if not choices:
        return None
    first = choices[0]
    message = first.message
    seen = None if message is None else {"content": message.content, "refusal": message.refusal}
    return {
        "choices": [{"message": seen, "finish_reason": first.finish_reason, "text": first.text}]
    }


def _body(answer: bytes) -> dict[str, Any]:
    """The body of an answer read the short way, made Python objects (for a check)."""
    try:
        body: dict[str, Any] = orjson.loads(answer)
    except orjson.JSONDecodeError:  # what JSON allows and orjson does not (a huge integer)
        body = json.loads(answer)
    return body


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector held off while a batch is read and written: every answer
    parsed is a handful of containers, all alive until the store has them, and the collector
    would walk the growing pile again and again (a third of ingest's time at 50,000 lines),
    though answers hold no cycles. Whatever cycles are made meanwhile are collected after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_lines(paths: Sequence[Path | None]) -> Iterator[LineResult]:
    for path in paths:
        if path is None:
            continue
        with path.open("rb") as handle:
            for raw in handle:
                parsed = parse_line(raw)
                if parsed is not None:
                    yield parsed


def classify(
    requests: Sequence[PendingRequest],
    lines: Iterator[LineResult],
    policy: RetryPolicy,
    cost: Callable[[PendingRequest, dict[str, Any]], tuple[int, int, float]],
    *,
    check: Callable[[PendingRequest, dict[str, Any]], str | None] | None = None,
    missing_reason: str = "missing_result: the request is in neither the output nor the error file",
    missing_ran: bool = True,
    unread_cost: Callable[[PendingRequest], float] | None = None,
) -> list[Outcome]:
    """One outcome per request of the batch; lines for unknown ids are ignored. With
    `missing_ran` false (a batch we cancelled), a request with no line never ran: it goes back
    to pending without using an attempt. A request that may have run and been billed though its
    usage cannot be read (a garbled line, no line at all) costs `unread_cost(request)`.
    `cost` prices an answer from its body's `usage`: it is given the body, or, for an answer
    read the short way, `{"usage": ...}` alone; `check` is given the body."""

    def unread(request: PendingRequest) -> float:
        return 0.0 if unread_cost is None else unread_cost(request)

    by_id = {request.id: request for request in requests}
    seen: dict[str, Outcome] = {}
    new, succeeded = tuple.__new__, RequestState.SUCCEEDED
    for line in lines:
        request = by_id.get(line.custom_id)
        if request is None or (line.custom_id in seen and not line.ok):
            continue
        if line.ok and (line.body is not None or line.raw is not None):
            body = line.body
            response: dict[str, Any] | Fragment
            if line.raw is not None:  # read the short way: the store keeps the body as it came
                response, used = Fragment(line.raw), {"usage": line.usage}
                if check is not None:
                    body = _checked_part(line.choices) or _body(line.raw)
            else:
                response = used = line.body or {}
            input_tokens, output_tokens, usd = cost(request, used)
            reason = check(request, body) if check is not None and body is not None else None
            if reason is None:  # made as it is, as a line is: no error, attempted, this lane
                made = (request.id, succeeded, response, input_tokens, output_tokens, usd)
                seen[request.id] = new(Outcome, (*made, None, True, None))
            else:  # answered and billed, but not usable: a failed attempt with its reason
                state = policy.next_state(request, True, True)
                seen[request.id] = Outcome(
                    request.id, state, None, input_tokens, output_tokens, usd, error=reason
                )
        elif request.id not in seen:
            state = policy.next_state(request, line.retryable, line.ran)
            usd = unread(request) if line.unread else 0.0
            seen[request.id] = Outcome(
                request.id, state, cost_usd=usd, error=line.error, attempted=line.ran
            )
    outcomes = []
    for request in requests:
        outcome = seen.get(request.id)
        if outcome is None and not missing_ran:
            outcome = Outcome(
                request.id, RequestState.PENDING, error="cancelled before it ran", attempted=False
            )
        elif outcome is None:
            state = policy.next_state(request, True, True)
            outcome = Outcome(request.id, state, cost_usd=unread(request), error=missing_reason)
        outcomes.append(outcome)
    return outcomes
