"""Reading a batch's result lines: an answered line is read the short way (a fixed shape
decoded, its body kept as the bytes it came as), any other line whole; both ways must end in
the same outcome, priced the same, with the same answer."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from batchpilot.answers import answer_of
from batchpilot.pricing import PriceTable, usage_cost
from batchpilot.providers.anthropic_shapes import chat_completion as anthropic_chat
from batchpilot.providers.gemini_shapes import chat_completion as gemini_chat
from batchpilot.run.ingest import LineResult, RetryPolicy, classify, parse_line, read_whole_line
from batchpilot.store import PendingRequest, RequestState
from batchpilot.validate import AnswerCheck

MODEL = "gpt-4o-mini"
PRICES = PriceTable.load()
CHAT_BODY: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"n": 1}'}}],
    "usage": {"prompt_tokens": 420, "completion_tokens": 24, "total_tokens": 444},
}


def line(body: Any = CHAT_BODY, status: Any = 200, custom_id: Any = "req-1", **extra: Any) -> str:
    response = {"status_code": status, "request_id": "req_x", "body": body}
    return json.dumps({"id": "batch_req_1", "custom_id": custom_id, "response": response, **extra})


def with_usage(usage: Any) -> dict[str, Any]:
    return {**CHAT_BODY, "usage": usage}


# lines the short way takes
ANSWERED = {
    "chat": line(),
    "compact": json.dumps(json.loads(line()), separators=(",", ":")),
    "escapes": line({**CHAT_BODY, "note": "caf\u00e9 \\u00e9 \u2028 \U0001f389"}),
    "other letters as they are": json.dumps(
        json.loads(line({**CHAT_BODY, "note": "café \u2028 🎉"})), ensure_ascii=False
    ),
    "cached tokens": line(
        with_usage(
            {
                "prompt_tokens": 1000,
                "completion_tokens": 10,
                "prompt_tokens_details": {"cached_tokens": 600},
            }
        )
    ),
    "responses names": line(
        with_usage({"input_tokens": 30, "output_tokens": 7, "input_tokens_details": {}})
    ),
    "no usage": line({k: v for k, v in CHAT_BODY.items() if k != "usage"}),
    "usage null": line(with_usage(None)),
    "prompt tokens null": line(with_usage({"prompt_tokens": None, "input_tokens": 5})),
    "tokens as text": line(with_usage({"prompt_tokens": "12", "completion_tokens": "3"})),
    "status 201": line(status=201),
    "an error beside the answer": line(error={"code": "x", "message": "y"}),
    "fields in another order": json.dumps(
        {
            "response": {"body": CHAT_BODY, "status_code": 200},
            "error": None,
            "custom_id": "req-1",
        }
    ),
    "an embedding": line(
        {"object": "list", "data": [{"embedding": [0.5, -1e-3]}], "usage": {"prompt_tokens": 3}}
    ),
}


def chat(message: Any, finish: Any = "stop", **choice: Any) -> dict[str, Any]:
    return {
        **CHAT_BODY,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
    }


ANSWERED |= {
    "a refusal": line(chat({"role": "assistant", "content": None, "refusal": "no"})),
    "cut short": line(chat({"role": "assistant", "content": '{"n": 1'}, "length")),
    "filtered": line(chat({"role": "assistant", "content": ""}, "content_filter")),
    "free text": line(chat({"role": "assistant", "content": "seven"})),
    "wrong shape": line(chat({"role": "assistant", "content": '{"n": "x"}'})),
    "content in parts": line(chat({"role": "assistant", "content": [{"type": "text"}]})),
    "message null, legacy text": line(chat(None, text='{"n": 2}')),
    "no message": line({**CHAT_BODY, "choices": [{"index": 0, "finish_reason": "stop"}]}),
    "two choices": line(
        {**CHAT_BODY, "choices": [*CHAT_BODY["choices"], {"message": {"content": "x"}}]}
    ),
    "no choices": line({**CHAT_BODY, "choices": []}),
    "keys twice, the last one taken": (
        '{"custom_id": "x", "custom_id": "req-1", "response": {"status_code": 200, "body": '
        '{"usage": {"prompt_tokens": 1}, "usage": {"prompt_tokens": 2, "completion_tokens": 1}, '
        '"choices": [{"message": {"content": "a"}}], "choices": [{"message": {"refusal": "no"}}]}}}'
    ),
    "a response": line(
        {
            "object": "response",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "{}"}]}],
            "incomplete_details": {"reason": "max_output_tokens"},
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }
    ),
}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def small(answer: Any, data: Any) -> bool | str:
    return "too big" if isinstance(answer, dict) and answer.get("n", 0) > 1 else True


CHECKS = [
    lambda request, body: AnswerCheck()(body),
    lambda request, body: AnswerCheck(SCHEMA)(body),
    lambda request, body: AnswerCheck(SCHEMA, [("small", small)])(body),
]

# lines read whole
OTHERS = {
    "http error": line({"error": {"code": "rate_limit_exceeded", "message": "slow"}}, 429),
    "server error": line({"error": {"message": "boom"}}, 500),
    "batch error": json.dumps(
        {"custom_id": "req-1", "response": None, "error": {"code": "batch_expired", "message": "x"}}
    ),
    "body a list": line([1, 2]),
    "body a text": line("answer"),
    "status as text": line(status="200"),
    "status true": line(status=True),
    "no body": json.dumps({"custom_id": "req-1", "response": {"status_code": 200}}),
    "id a number": line(custom_id=7),
    "usage a list": line(with_usage([1, 2])),
    "garbled": line()[:-9],
    "not an object": "[1, 2, 3]",
    "no response": json.dumps({"custom_id": "req-1"}),
    "blank": "   ",
}


def request() -> PendingRequest:
    return PendingRequest("req-1", "/v1/chat/completions", MODEL, b"", 400, 100, 0, 0)


def cost(request: PendingRequest, body: dict[str, Any]) -> tuple[int, int, float]:
    return usage_cost(PRICES, request.model, body, batch=True)


def outcome_of(read: LineResult | None, check: Any = None) -> tuple[Any, ...]:
    lines = iter([] if read is None else [read])
    (made,) = classify([request()], lines, RetryPolicy(), cost, check=check)
    response = None if made.response is None else orjson.loads(orjson.dumps(made.response))
    return (*made._replace(response=None), response)


@pytest.mark.parametrize("name", ANSWERED)
def test_an_answered_line_read_the_short_way_ends_as_when_read_whole(name: str) -> None:
    raw = (ANSWERED[name] + "\n").encode()
    short, whole = parse_line(raw), read_whole_line(raw)
    assert short is not None and whole is not None
    assert short.raw is not None and short.body is None, "not read the short way"
    assert short.ok and whole.ok and whole.body is not None
    assert orjson.loads(short.raw) == whole.body
    assert short._replace(body=whole.body, raw=None, usage=None, choices=None) == whole
    assert outcome_of(short) == outcome_of(whole)
    assert outcome_of(short)[1] == RequestState.SUCCEEDED
    # a check reads the same answer from either, and refuses the same way
    seen: list[Any] = []

    def refuse(request: PendingRequest, body: dict[str, Any]) -> str | None:
        seen.append(answer_of(body))
        return "schema: refused"

    assert outcome_of(short, refuse) == outcome_of(whole, refuse)
    assert seen[0] == seen[1]
    for check in CHECKS:
        assert outcome_of(short, check) == outcome_of(whole, check)


@pytest.mark.parametrize("name", OTHERS)
def test_any_other_line_is_read_whole(name: str) -> None:
    raw = (OTHERS[name] + "\n").encode()
    read = parse_line(raw)
    assert read == read_whole_line(raw)
    assert read is None or read.raw is None


def test_the_store_keeps_a_body_read_the_short_way_as_it_came() -> None:
    raw = ANSWERED["escapes"].encode()
    read = parse_line(raw)
    assert read is not None and read.raw is not None
    (made,) = classify([request()], iter([read]), RetryPolicy(), cost)
    kept = orjson.dumps(made.response)
    assert kept == read.raw and kept in raw
    assert b"\\u00e9" in kept  # an escape kept as it came, not rewritten


def test_the_short_way_takes_what_json_allows_and_orjson_does_not() -> None:
    big = 2**70  # in a body that is not a chat completion, which a check is given whole
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "n": big}
    raw = line({"object": "list", "data": [], "usage": usage}).encode()
    read = parse_line(raw)
    assert read is not None and read.ok and read.raw is not None

    def check(request: PendingRequest, body: dict[str, Any]) -> str | None:
        assert body["usage"]["n"] == big
        return None

    (made,) = classify([request()], iter([read]), RetryPolicy(), cost, check=check)
    assert made.state == RequestState.SUCCEEDED and made.input_tokens == 5


ODD_USAGES = {
    "a list": [1, 2],
    "a text": "many",
    "tokens as words": {"prompt_tokens": "abc", "completion_tokens": "3"},
    "tokens as objects": {"prompt_tokens": {"n": 1}, "completion_tokens": [2]},
    "details a list": {"prompt_tokens": 5, "prompt_tokens_details": [1]},
    "cached tokens as words": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": "x"}},
}


@pytest.mark.parametrize("name", ODD_USAGES)
def test_an_answer_whose_usage_cannot_be_read_is_kept_with_what_can_be(name: str) -> None:
    usage = ODD_USAGES[name]
    raw = line(with_usage(usage)).encode()
    for read in (parse_line(raw), read_whole_line(raw)):
        (made,) = classify([request()], iter([read] if read else []), RetryPolicy(), cost)
        assert made.state == RequestState.SUCCEEDED
        readable = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        assert made.input_tokens == (readable if isinstance(readable, int) else 0)
        assert made.output_tokens == (3 if name == "tokens as words" else 0)


ODD_COUNTS = {
    "words": ("abc", 0),
    "digits": ("3", 3),
    "an object": ({"n": 1}, 0),
    "a list": ([2], 0),
}


@pytest.mark.parametrize("name", ODD_COUNTS)
def test_other_providers_answers_with_odd_token_counts_are_translated(name: str) -> None:
    value, expected = ODD_COUNTS[name]
    message = {"id": "m", "content": [], "usage": {"input_tokens": value, "output_tokens": value}}
    usage = anthropic_chat(message)["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (expected, expected)
    counts = {"promptTokenCount": value, "candidatesTokenCount": value}
    usage = gemini_chat({"candidates": [], "usageMetadata": counts}, MODEL)["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (expected, expected)


@pytest.mark.parametrize("usage", [[1, 2], "many", None])
def test_other_providers_answers_whose_usage_is_not_an_object_are_translated(usage: Any) -> None:
    assert anthropic_chat({"id": "m", "content": [], "usage": usage})["usage"]["prompt_tokens"] == 0
    translated = gemini_chat({"candidates": [], "usageMetadata": usage}, MODEL)
    assert translated["usage"]["prompt_tokens"] == 0


def garbled(text: str) -> bytes:
    """A line with bytes that are not UTF-8 where `text` says BAD."""
    return text.encode().replace(b"BAD", b"\xff\xfe")


NOT_UTF8 = {
    # where the bytes that are not UTF-8 are: each line is otherwise an answer
    "in the content": garbled(line(with_usage({"prompt_tokens": 3})).replace("1}", "BAD}")),
    "in a part skipped unread": garbled(line({**CHAT_BODY, "id": "xBAD"})),
    "in a part of the line outside the body": garbled(line(id="BAD")),
}


@pytest.mark.parametrize("name", NOT_UTF8)
def test_a_line_that_is_not_utf8_is_garbled_not_kept(name: str) -> None:
    """A download cut or garbled: the line's answer cannot be kept as it came (every reader of
    the kept answer would stop on it), so it is a garbled line, tried again."""
    raw = NOT_UTF8[name]
    assert b"\xff" in raw
    read = parse_line(raw)
    assert read is not None and read.custom_id == "req-1"
    if read.ok:  # only a part outside the answer's body was not UTF-8: the body is kept
        assert read.raw is not None and read.raw.decode()
    else:
        assert read.unread and read.error is not None and read.error.startswith("garbled_line")
        made = outcome_of(read)
        assert made[1] == RequestState.PENDING  # tried again


@pytest.mark.parametrize("custom_id", [b"req-\xff", b"req-\\u12", b"req-\\ud800\xff"])
def test_a_garbled_line_whose_id_cannot_be_read_is_left_unmatched(custom_id: bytes) -> None:
    raw = b'{"custom_id": "' + custom_id + b'", "response": {"status_code": 200, "body": {'
    assert parse_line(raw) is None
    (made,) = classify([request()], iter([]), RetryPolicy(), cost)
    assert made.state == RequestState.PENDING and made.error is not None
