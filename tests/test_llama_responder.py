"""The llama responder against the real SmolLM2 model."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from batchpilot.server.responders.base import Responder, ResponderError
from batchpilot.server.responders.llama import LlamaResponder

pytestmark = pytest.mark.llama

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def responder() -> Iterator[LlamaResponder]:
    instance = LlamaResponder(n_ctx=2048, embedding=True)
    yield instance
    instance.close()


def _ask(content: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "seed": 7,
    }
    body.update(extra)
    return body


def test_is_a_responder(responder: LlamaResponder) -> None:
    assert isinstance(responder, Responder)
    assert responder.name == "llama"


def test_plain_chat_has_openai_shape(responder: LlamaResponder) -> None:
    answer = responder.chat(_ask("Name one colour.", max_tokens=16, store=True, stream=False))

    assert answer["object"] == "chat.completion"
    assert answer["model"] == "smollm2"
    assert answer["id"].startswith("chatcmpl-")
    assert isinstance(answer["created"], int)
    assert "timings" not in answer
    choice = answer["choices"][0]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] in {"stop", "length"}
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["content"].strip()
    assert message["refusal"] is None
    assert message["annotations"] == []
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0


def test_structured_answer_matches_schema(responder: LlamaResponder) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "strict": True, "schema": SCHEMA},
    }
    answer = responder.chat(
        _ask(
            "Weather report for Paris as JSON.",
            max_tokens=64,
            response_format=response_format,
        )
    )
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_tiny_limit_finishes_with_length(responder: LlamaResponder) -> None:
    answer = responder.chat(_ask("Tell me a long story.", max_completion_tokens=3))
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


def test_broken_schema_is_a_400(responder: LlamaResponder) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}},
    }
    with pytest.raises(ResponderError) as caught:
        responder.chat(_ask("Hi", max_tokens=8, response_format=response_format))
    assert caught.value.status_code == 400
    assert caught.value.param == "response_format"
    assert "no-such-type" in caught.value.message


def test_llama_errors_keep_their_status(responder: LlamaResponder) -> None:
    with pytest.raises(ResponderError) as caught:
        responder.chat(_ask("Hi", max_tokens=4, n=2))
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "n"
    with pytest.raises(ResponderError) as caught:
        responder.chat({"model": "smollm2", "messages": []})
    assert caught.value.param == "messages"


def test_embeddings(responder: LlamaResponder) -> None:
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.", "Tax filing deadline."]
    result = responder.embed({"model": "local-embed", "input": texts})

    assert result["object"] == "list"
    assert result["model"] == "local-embed"
    assert [item["index"] for item in result["data"]] == [0, 1, 2]
    vectors = [item["embedding"] for item in result["data"]]
    assert all(item["object"] == "embedding" for item in result["data"])
    assert {len(vector) for vector in vectors} == {576}
    for vector in vectors:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4)
    similar = math.fsum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    unrelated = math.fsum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert similar > unrelated
    assert result["usage"]["prompt_tokens"] == result["usage"]["total_tokens"] > 0


def test_embeddings_reject_other_dimensions(responder: LlamaResponder) -> None:
    with pytest.raises(ResponderError) as caught:
        responder.embed({"model": "local-embed", "input": "hi", "dimensions": 64})
    assert caught.value.param == "dimensions"


def test_embeddings_need_embedding_mode() -> None:
    responder = LlamaResponder(n_ctx=512)
    try:
        with pytest.raises(ResponderError) as caught:
            responder.embed({"model": "local-embed", "input": "hi"})
        assert caught.value.status_code == 400
        assert caught.value.code == "model_not_supported"
    finally:
        responder.close()
    with pytest.raises(ResponderError) as closed:
        responder.chat(_ask("Hi", max_tokens=2))
    assert closed.value.status_code == 503


def test_oversized_inputs_are_context_errors(responder: LlamaResponder) -> None:
    with pytest.raises(ResponderError) as caught:
        responder.chat(_ask("word " * 3000, max_tokens=1))
    assert (caught.value.status_code, caught.value.code) == (400, "context_length_exceeded")
    with pytest.raises(ResponderError) as caught:
        responder.embed({"model": "local-embed", "input": "word " * 700})
    assert (caught.value.status_code, caught.value.code) == (400, "context_length_exceeded")
