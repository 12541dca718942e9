"""Whatever a provider puts in a batch's results, reading them never stops with a traceback:
each result, with any one of its parts replaced by another kind of JSON value, is translated to
our result line (Anthropic, Gemini), read and classified, and comes out an outcome."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from batchpilot.answers import answer_of, response_content
from batchpilot.pricing import PriceTable, usage_cost
from batchpilot.providers import RemoteStatus
from batchpilot.providers.anthropic_shapes import result_line as anthropic_line
from batchpilot.providers.gemini_batch import result_line as gemini_line
from batchpilot.run.ingest import RetryPolicy, classify, parse_line
from batchpilot.store import PendingRequest, RequestState
from batchpilot.validate import AnswerCheck

CHAT = "/v1/chat/completions"
PRICES = PriceTable.load()
ODD: list[Any] = [
    None,
    True,
    0,
    -7,
    2**70,
    1.5,
    "",
    "text",
    [],
    [1, "x"],
    {},
    {"a": None},
    [{"type": "text"}],
]

OPENAI_LINE = {
    "id": "batch_req_1",
    "custom_id": "req-1",
    "response": {
        "status_code": 200,
        "request_id": "r",
        "body": {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": '{"n": 1}', "refusal": None},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        },
    },
    "error": None,
}
OPENAI_ERROR = {
    "id": "batch_req_2",
    "custom_id": "req-1",
    "response": {
        "status_code": 429,
        "body": {"error": {"code": "rate_limit_exceeded", "message": "slow", "type": "x"}},
    },
    "error": {"code": "batch_expired", "message": "expired"},
}
ANTHROPIC_ITEMS = [
    {
        "custom_id": "req-1",
        "result": {
            "type": "succeeded",
            "message": {
                "id": "msg_1",
                "model": "claude-haiku-4-5",
                "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "input": {}}],
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": 5,
                    "output_tokens": 3,
                    "cache_read_input_tokens": 1,
                    "cache_creation_input_tokens": 1,
                },
            },
        },
    },
    {
        "custom_id": "req-1",
        "result": {
            "type": "errored",
            "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
        },
    },
    {"custom_id": "req-1", "result": {"type": "expired"}},
]
GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {"parts": [{"text": "hi"}, {"text": "x", "thought": True}], "role": "model"},
            "finishReason": "STOP",
        }
    ],
    "promptFeedback": {"blockReason": "SAFETY"},
    "usageMetadata": {
        "promptTokenCount": 5,
        "candidatesTokenCount": 2,
        "thoughtsTokenCount": 1,
        "cachedContentTokenCount": 1,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "abc",
}
GEMINI_ERROR = {"code": 4, "message": "expired"}
RESPONSE_BODY = {
    "object": "response",
    "output": [
        {"type": "reasoning", "content": []},
        {
            "type": "message",
            "content": [
                {"type": "output_text", "text": '{"n": 1}'},
                {"type": "refusal", "refusal": "no"},
            ],
        },
    ],
    "incomplete_details": {"reason": "max_output_tokens"},
    "usage": {"input_tokens": 3, "output_tokens": 1},
}
EMBEDDING_BODY = {"object": "list", "data": [{"embedding": [0.5, 1.0]}], "usage": {}}


def paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value, the value itself included."""
    yield at
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*at, key))
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from paths(item, (*at, number))


def replaced(value: Any, at: tuple[Any, ...], new: Any) -> Any:
    if not at:
        return copy.deepcopy(new)
    changed = copy.deepcopy(value)
    holder = changed
    for step in at[:-1]:
        holder = holder[step]
    holder[at[-1]] = copy.deepcopy(new)
    return changed


def mutations(value: Any) -> Iterator[Any]:
    """`value` with each of its parts in turn replaced by each odd value."""
    for at in paths(value):
        for new in ODD:
            yield replaced(value, at, new)


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
JUDGE = AnswerCheck(SCHEMA, [("any", lambda answer, data: True)])


def job_check(request: PendingRequest, body: dict[str, Any]) -> str | None:
    """A job's check with a schema and a validator, which reads every part of an answer."""
    reason = JUDGE(body)
    assert reason is None or isinstance(reason, str)
    return reason


def request() -> PendingRequest:
    return PendingRequest("req-1", CHAT, "gpt-4o-mini", b"", 10, 100, 0, 0)


def outcome(line: Any, check: Any = job_check) -> Any:
    """Our result line read and classified, as the batch lane does (`check`: a job's)."""
    raw = json.dumps(line).encode()

    def cost(request: PendingRequest, body: dict[str, Any]) -> tuple[int, int, float]:
        return usage_cost(PRICES, request.model, body, batch=True)

    read = parse_line(raw)
    lines = iter([] if read is None else [read])
    (made,) = classify(
        [request()], lines, RetryPolicy(), cost, check=check, unread_cost=lambda r: 0.01
    )
    assert made.state in (RequestState.SUCCEEDED, RequestState.PENDING, RequestState.FAILED)
    assert made.input_tokens >= 0 and made.output_tokens >= 0 and made.cost_usd >= 0
    return made


@pytest.mark.parametrize("base", [OPENAI_LINE, OPENAI_ERROR], ids=["answer", "error"])
def test_any_result_line_is_classified(base: dict[str, Any]) -> None:
    count = 0
    for line in mutations(base):
        outcome(line)
        count += 1
    assert count > 100
    assert outcome(base, None).state == (
        RequestState.SUCCEEDED if base is OPENAI_LINE else RequestState.PENDING
    )


@pytest.mark.parametrize("item", ANTHROPIC_ITEMS, ids=["succeeded", "errored", "expired"])
def test_any_anthropic_result_is_translated_and_classified(item: dict[str, Any]) -> None:
    for mutated in mutations(item):
        answered, line = anthropic_line(mutated, CHAT)
        assert isinstance(answered, bool) and isinstance(line, dict)
        outcome(line)
    answered, line = anthropic_line(item, CHAT)
    assert answered == (item["result"]["type"] == "succeeded")
    assert (outcome(line, None).state == RequestState.SUCCEEDED) == answered


@pytest.mark.parametrize("status", [RemoteStatus.COMPLETED, RemoteStatus.EXPIRED])
def test_any_gemini_result_is_translated_and_classified(status: RemoteStatus) -> None:
    rng = random.Random(7)
    cases = [(m, None) for m in mutations(GEMINI_RESPONSE)]
    cases += [(None, m) for m in mutations(GEMINI_ERROR)]
    for key in ["req-1", *rng.sample(ODD, 4)]:
        for response, error in cases:
            answered, line = gemini_line(key, response, error, status, "models/gemini-2.5-flash")
            assert isinstance(answered, bool) and isinstance(line, dict)
            outcome(line)
    answered, line = gemini_line("req-1", GEMINI_RESPONSE, None, status, None)
    assert answered and outcome(line, None).state == RequestState.SUCCEEDED


def test_any_answer_body_is_read_checked_and_exported() -> None:
    """What a check and an export read of a body, whatever its parts hold."""
    bodies = [OPENAI_LINE["response"]["body"], RESPONSE_BODY, EMBEDDING_BODY]
    count = 0
    for base in bodies:
        for body in mutations(base):
            found = answer_of(body)
            assert found is None or (
                (found.text is None or isinstance(found.text, str))
                and (found.refusal is None or isinstance(found.refusal, str))
            )
            reason = JUDGE(body)
            assert reason is None or isinstance(reason, str)
            text, embedding = response_content(body)
            assert text is None or isinstance(text, str)
            assert embedding is None or isinstance(embedding, list)
            count += 1
    assert count > 300
