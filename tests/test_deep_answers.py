"""Text nested deeper than `MAX_NESTING` levels (a model caught repeating `[`, a garbled or
hostile answer) is refused with a reason wherever an answer is read, checked, kept, exported or
shown: never a `RecursionError`, or an answer the store cannot write back, that stops a batch, a
real-time request, an export or a page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from batchpilot.answers import parsed_answer
from batchpilot.export import export_rows, write_export
from batchpilot.jsontext import MAX_NESTING, loads
from batchpilot.providers.base import CallFailed
from batchpilot.providers.retry import json_object
from batchpilot.run.ingest import RetryPolicy, classify, parse_line
from batchpilot.store import Outcome, PendingRequest, RequestState, RunRecord, SQLiteStore, utc_now
from batchpilot.ui.pages import _pretty
from batchpilot.validate import AnswerCheck

DEPTHS = [MAX_NESTING - 3, MAX_NESTING, MAX_NESTING + 1, 256, 1000, 1020, 3000, 100_000]
SCHEMAS: list[dict[str, Any]] = [
    {"type": "object"},
    {"type": "array"},
    {"type": "array", "items": {"$ref": "#"}},  # a schema that follows the answer down
]


def nested(depth: int, closed: bool = True) -> str:
    return "[" * depth + ("]" * depth if closed else "")


def chat(content: str) -> dict[str, Any]:
    return {
        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }


def readable(depth: int) -> bool:
    return depth <= MAX_NESTING


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("closed", [True, False])
def test_text_nested_too_deeply_is_not_json_to_the_reader(depth: int, closed: bool) -> None:
    text = nested(depth, closed)
    if readable(depth) and closed:
        assert isinstance(loads(text), list) and isinstance(parsed_answer(text), list)
    else:
        with pytest.raises(ValueError):
            loads(text)
        assert parsed_answer(text) is None


def test_many_brackets_that_do_not_nest_deeply_are_read() -> None:
    text = orjson.dumps([{"a": [i]} for i in range(1000)]).decode()
    assert len(loads(text)) == 1000
    assert parsed_answer(text) == [{"a": [i]} for i in range(1000)]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("compiled", [True, False])
def test_a_check_gives_a_reason_for_an_answer_nested_too_deeply(
    depth: int, schema: dict[str, Any], compiled: bool
) -> None:
    check = AnswerCheck(schema)
    if not compiled:
        check.valid = None
    reason = check(chat(nested(depth)))
    if readable(depth):
        assert (reason is None) == (schema["type"] == "array"), reason
    else:
        assert reason is not None and reason.startswith("invalid_json:"), reason
    assert AnswerCheck()(chat(nested(depth))) is None  # a job without a schema takes any text


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_result_line_nested_too_deeply_is_refused(depth: int) -> None:
    body = '{"x": ' + nested(depth) + ', "choices": [], "usage": {"prompt_tokens": 1}}'
    raw = '{"custom_id": "req-1", "response": {"status_code": 200, "body": ' + body + "}}\n"
    read = parse_line(raw.encode())
    assert read is not None and read.custom_id == "req-1"
    request = PendingRequest("req-1", "/v1/chat/completions", "m", b"", 10, 10, 0, 0)

    def cost(request: PendingRequest, used: dict[str, Any]) -> tuple[int, int, float]:
        return 1, 1, 0.0

    (made,) = classify([request], iter([read]), RetryPolicy(), cost, check=lambda r, b: None)
    if readable(depth + 3):  # in the line, the response and the body
        assert made.state == RequestState.SUCCEEDED and made.response is not None
        assert orjson.loads(orjson.dumps(made.response))["x"]  # the store can write it
    else:  # refused, and tried again
        assert not read.ok and read.error is not None
        assert read.error.startswith(("invalid_answer", "garbled_line")), read.error
        assert made.state == RequestState.PENDING


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_real_time_answer_nested_too_deeply_is_a_failure_to_try_again(depth: int) -> None:
    body = b'{"x": ' + nested(depth).encode() + b', "choices": []}'
    answer = json_object(httpx2.Response(200, content=body))
    if readable(depth + 1):  # in the body
        assert isinstance(answer, dict)
        orjson.dumps(answer)
    else:
        assert isinstance(answer, CallFailed) and answer.retryable and answer.may_have_run


@pytest.mark.parametrize("depth", DEPTHS)
def test_an_answer_nested_deeply_is_exported_and_shown(tmp_path: Path, depth: int) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite3")
    store.create_run(RunRecord("run", "job", "{}", "openai", "/v1/x", "running", None, utc_now()))
    with store.tx():
        store.add_row("run", 0, "row-0", "in.jsonl:1", "req-0", {"i": 0})
        store.add_request("run", "req-0", "req-0", "/v1/x", "m", b"{}", 10, 10, 0)
    assert store.claim_realtime("run", "req-0")
    answered = Outcome("req-0", RequestState.SUCCEEDED, chat(nested(depth)), 3, 2, 0.0)
    store.finish_realtime("run", answered)
    short, general = tmp_path / "short.jsonl", tmp_path / "general.jsonl"
    write_export(export_rows(store, "run"), short, include_input=True)
    write_export(list(export_rows(store, "run")), general, include_input=True)
    store.close()
    assert short.read_bytes() == general.read_bytes()
    (line,) = short.read_bytes().splitlines()
    output = orjson.loads(line)["output"]
    # read back as JSON when it nests no deeper than that, else kept as the text it came as
    assert isinstance(output, list) if readable(depth) else output == nested(depth)
    shown = _pretty(nested(depth))
    assert shown.startswith("<pre>") and "[" in shown
