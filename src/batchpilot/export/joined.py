"""A run's stored rows as an export sees them: each joined row made an `ExportRow`, or, for
a JSONL export of every row as it is, its line made straight from the joined row.

The straight way builds the same record from the same values as `jsonl_record` does from the
row's `ExportRow`, so its bytes are the same; a row it does not cover (skipped, or given a
fallback answer) takes the general way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import orjson

from batchpilot.answers import parsed_answer, response_content
from batchpilot.export.rows import ExportRow, dump_json, input_json
from batchpilot.jsontext import MAX_NESTING, loads, nesting_within
from batchpilot.store import JoinedRow

__all__ = ["Fallback", "StoredRows", "export_row"]

Fragment = orjson.Fragment
# every key of a record made here is text (parsed JSON has no other), so orjson is not asked
# to take any other kind (which costs it a third more); `dump_json` writes what it refuses
_OPTIONS = orjson.OPT_APPEND_NEWLINE
dumps = orjson.dumps

Fallback = Callable[[dict[str, Any] | None], Any]


def export_row(row: JoinedRow, fallback: Fallback | None) -> ExportRow:
    """A joined row with its answer read and its status said; a row that
    finally failed gets `fallback(input row)` as its answer when a fallback is given."""
    response = loads(row.response_json) if row.response_json else None
    content, embedding = response_content(response)
    parsed: Any = parsed_answer(content)
    status = "skipped" if row.request_id is None else (row.state or "pending")
    if status == "failed" and fallback is not None:
        data = loads(row.data_json) if row.data_json else None
        answer = fallback(data)
        status = "fallback"
        if isinstance(answer, dict | list):
            parsed, content = answer, json.dumps(answer)
        else:
            content = None if answer is None else str(answer)
    return ExportRow(
        index=row.row_index,
        row_id=row.row_id,
        request_id=row.request_id,
        status=status,
        attempts=row.attempts or 0,
        data=loads(row.data_json) if row.data_json else None,
        content=content,
        parsed=parsed,
        embedding=embedding,
        response=response,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cost_usd=row.cost_usd,
        error=row.skip_reason if row.request_id is None else row.error,
        lane=row.lane,
        data_json=row.data_json,
    )


_OTHER = object()


class _Message(msgspec.Struct):
    content: Any = None


class _Choice(msgspec.Struct):
    message: _Message | None = None


class _Chat(msgspec.Struct):
    """What the short way reads of an answer: a chat completion's first message's text, and
    whether the body holds `data` (an embedding's, which is read another way)."""

    choices: list[_Choice] | None = None
    data: Any = msgspec.UNSET


_read_chat = msgspec.json.Decoder(_Chat).decode
_CHAT_REFUSED = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
_OPENING = ("{", "[")


def _chat_text(response: Any) -> Any:
    """The text of a chat completion's first message, as `response_content` finds it; `_OTHER`
    for any other body."""
    if response.__class__ is dict and "data" not in response:
        choices = response.get("choices")
        if choices.__class__ is list and choices:
            choice = choices[0]
            if choice.__class__ is dict:
                message = choice.get("message")
                if message.__class__ is dict:
                    content = message.get("content")
                    if content.__class__ is str:
                        return content
    return _OTHER


class StoredRows(Iterator[ExportRow]):
    """A run's rows in input order, each an `ExportRow`, from the store's joined rows."""

    def __init__(self, joined: Iterator[JoinedRow], fallback: Fallback | None) -> None:
        self._joined = joined
        self._fallback = fallback

    def __iter__(self) -> StoredRows:
        return self

    def __next__(self) -> ExportRow:
        return export_row(next(self._joined), self._fallback)

    def jsonl_lines(
        self, include_input: bool, general: Callable[[ExportRow], bytes]
    ) -> Iterator[bytes]:
        """Each row's JSONL line, its newline included, as `general(export_row(row))` makes
        it (without the newline), taking the short way for rows with a request and no
        fallback answer. The short way is the export's inner loop: what `_chat_text`,
        `parsed_answer` and `input_json` decide is written out here."""
        fallback = self._fallback
        read, refused, other = orjson.loads, orjson.JSONDecodeError, _OTHER
        read_chat, chat_refused, unset = _read_chat, _CHAT_REFUSED, msgspec.UNSET
        most = MAX_NESTING
        for row in self._joined:
            (
                _,
                row_id,
                request_id,
                _,
                _,
                data,
                state,
                attempts,
                error,
                answer,
                input_tokens,
                output_tokens,
                cost_usd,
                lane,
            ) = row
            if request_id is None or (state == "failed" and fallback is not None):
                yield general(export_row(row, fallback)) + b"\n"
                continue
            output: Any = None
            if answer:
                try:
                    chat = read_chat(answer)
                    content = chat.choices[0].message.content  # type: ignore[index,union-attr]
                    if content.__class__ is not str or chat.data is not unset:
                        content = other
                except (*chat_refused, IndexError, TypeError, AttributeError):
                    content = other
                if content is other:
                    try:
                        response = read(answer)
                    except refused:
                        response = loads(answer)
                    content, output = response_content(response)
                if content is not None:
                    output = content
                    if content[:1] in _OPENING or content.lstrip()[:1] in _OPENING:
                        try:
                            parsed = read(content)
                        except refused:
                            parsed = parsed_answer(content)
                        if (parsed.__class__ is dict or parsed.__class__ is list) and (
                            content.count("[") + content.count("{") <= most  # nearly all
                            or nesting_within(content, parsed)
                        ):
                            output = parsed
            given: Any = None
            if include_input and data:
                # the row's JSON as kept, as `input_json` would write it, without a call
                if "NaN" not in data and "Infinity" not in data:
                    given = Fragment(data)
                else:
                    given = loads(data)
            record: dict[str, Any] = {
                "id": row_id,
                "status": state or "pending",
                "attempts": attempts or 0,
                "input": given,
                "output": output,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                "cost_usd": cost_usd,
                "error": error,
                "lane": lane,
                "request_id": request_id,
            }
            if not include_input:
                del record["input"]
            try:
                line = dumps(record, option=_OPTIONS)
            except TypeError:  # what only Python writes: `dump_json` takes it
                if include_input and data:
                    record["input"] = input_json(data, loads(data))
                line = dump_json(record) + b"\n"
            yield line
