from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any, Literal

import httpx2
import openai
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from batchpilot.server.responders.base import Responder, ResponderError
from batchpilot.server.responders.synthetic import SyntheticResponder
from batchpilot.tokens import count_request, count_text

MODEL = "gpt-4o-mini"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "ticket": {"type": "string", "pattern": r"^[A-Z]{2}-\d{3}$"},
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "contact": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
    },
    "required": ["sentiment", "score", "ticket", "topics", "contact"],
    "additionalProperties": False,
}


def chat_body(text: str = "How is the weather in Lisbon today?", **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text},
        ],
        **extra,
    }


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "strict": True, "schema": schema}}


@pytest.fixture
def responder() -> SyntheticResponder:
    return SyntheticResponder()


def without_created(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "created"}


def test_implements_the_responder_protocol(responder: SyntheticResponder) -> None:
    assert isinstance(responder, Responder)
    assert responder.name == "synthetic"
    responder.close()


def test_chat_is_deterministic(responder: SyntheticResponder) -> None:
    first = responder.chat(chat_body())
    second = SyntheticResponder().chat(chat_body())
    assert without_created(first) == without_created(second)
    assert first["id"].startswith("chatcmpl-") and len(first["id"]) == len("chatcmpl-") + 24
    assert first["id"][9:].isalnum()
    other = responder.chat(chat_body("Something else entirely"))
    assert other["id"] != first["id"]


def test_chat_response_shape(responder: SyntheticResponder) -> None:
    response = responder.chat(chat_body())
    assert response["object"] == "chat.completion"
    assert response["model"] == MODEL
    assert isinstance(response["created"], int)
    assert response["system_fingerprint"] == "fp_batchpilot_synthetic"
    assert response["service_tier"] == "default"
    [choice] = response["choices"]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["refusal"] is None and message["annotations"] == []
    assert message["content"].startswith("Synthetic answer: ")
    assert "Lisbon" in message["content"]


def test_text_answer_echoes_a_truncated_user_message(responder: SyntheticResponder) -> None:
    long_text = " ".join(f"word{i}" for i in range(100))
    content = responder.chat(chat_body(long_text))["choices"][0]["message"]["content"]
    assert "word0" in content and "word99" not in content
    parts = chat_body()
    parts["messages"][1]["content"] = [
        {"type": "text", "text": "Describe this picture"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    content = responder.chat(parts)["choices"][0]["message"]["content"]
    assert "Describe this picture" in content


def test_usage_matches_token_counts(responder: SyntheticResponder) -> None:
    for body in (chat_body(), chat_body(n=3), chat_body(response_format=schema_format(SCHEMA))):
        response = responder.chat(body)
        usage = response["usage"]
        contents = [c["message"]["content"] for c in response["choices"]]
        assert usage["prompt_tokens"] == count_request(body, "/v1/chat/completions").tokens
        assert usage["completion_tokens"] == sum(count_text(c, MODEL) for c in contents)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
        assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}


def test_json_schema_content_is_valid(responder: SyntheticResponder) -> None:
    validator = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
    contents = set()
    for i in range(30):
        body = chat_body(f"Review number {i}", response_format=schema_format(SCHEMA))
        content = responder.chat(body)["choices"][0]["message"]["content"]
        validator.validate(json.loads(content))
        contents.add(content)
    assert len(contents) > 20


def test_json_object_and_text_formats(responder: SyntheticResponder) -> None:
    body = chat_body(response_format={"type": "json_object"})
    assert isinstance(json.loads(responder.chat(body)["choices"][0]["message"]["content"]), dict)
    text = responder.chat(chat_body(response_format={"type": "text"}))
    assert text["choices"][0]["message"]["content"].startswith("Synthetic answer")


def test_n_choices(responder: SyntheticResponder) -> None:
    response = responder.chat(chat_body(n=3, response_format=schema_format(SCHEMA)))
    assert [c["index"] for c in response["choices"]] == [0, 1, 2]
    for choice in response["choices"]:
        Draft202012Validator(SCHEMA).validate(json.loads(choice["message"]["content"]))


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_length_truncation(responder: SyntheticResponder, key: str) -> None:
    body = chat_body(response_format=schema_format(SCHEMA))
    body[key] = 5
    response = responder.chat(body)
    [choice] = response["choices"]
    content = choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert 0 < count_text(content, MODEL) <= 5
    assert response["usage"]["completion_tokens"] == count_text(content, MODEL)
    full = responder.chat(chat_body(response_format=schema_format(SCHEMA)))
    assert full["choices"][0]["message"]["content"].startswith(content)


def test_generous_limit_is_not_a_truncation(responder: SyntheticResponder) -> None:
    response = responder.chat(chat_body(max_completion_tokens=4096, max_tokens=1))
    assert response["choices"][0]["finish_reason"] == "stop"


def test_missing_messages_is_a_400(responder: SyntheticResponder) -> None:
    with pytest.raises(ResponderError) as info:
        responder.chat({"model": MODEL})
    error = info.value
    assert error.status_code == 400
    assert error.envelope() == {
        "error": {
            "message": "Missing required parameter: 'messages'.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "missing_required_parameter",
        }
    }


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "missing_required_parameter"),
        ({"model": 3, "messages": [{"role": "user", "content": "hi"}]}, "model", "invalid_type"),
        ({"model": MODEL, "messages": []}, "messages", "empty_array"),
        ({"model": MODEL, "messages": "hi"}, "messages", "invalid_type"),
        ({"model": MODEL, "messages": ["hi"]}, "messages[0]", "invalid_type"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages[0].role", None),
        (chat_body(n=0), "n", "integer_below_min_value"),
        (chat_body(max_tokens="ten"), "max_tokens", "invalid_type"),
        (chat_body(response_format={"type": "yaml"}), "response_format.type", "invalid_value"),
        (chat_body(response_format={"type": "json_schema"}), "response_format.json_schema", None),
        (
            chat_body(
                response_format=schema_format({"type": "integer", "minimum": 3, "maximum": 1})
            ),
            "response_format",
            "invalid_json_schema",
        ),
    ],
)
def test_bad_chat_bodies(
    responder: SyntheticResponder, body: dict[str, Any], param: str, code: str | None
) -> None:
    with pytest.raises(ResponderError) as info:
        responder.chat(body)
    assert info.value.status_code == 400
    assert info.value.param == param
    if code is not None:
        assert info.value.code == code


# --- embeddings --------------------------------------------------------------------------------


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_embeddings_shape_and_norm(responder: SyntheticResponder) -> None:
    body = {"model": "text-embedding-3-small", "input": ["hello world", "goodbye", "hello world"]}
    response = responder.embed(body)
    assert response["object"] == "list"
    assert response["model"] == "text-embedding-3-small"
    assert [d["index"] for d in response["data"]] == [0, 1, 2]
    vectors = [d["embedding"] for d in response["data"]]
    assert all(d["object"] == "embedding" for d in response["data"])
    assert all(len(v) == 256 for v in vectors)
    assert all(abs(norm(v) - 1.0) < 1e-5 for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    tokens = count_request(body, "/v1/embeddings").tokens
    assert response["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert responder.embed(body) == response


def test_embedding_dimensions_and_inputs() -> None:
    responder = SyntheticResponder(embedding_dim=64)
    assert len(responder.embed({"model": "m", "input": "x"})["data"][0]["embedding"]) == 64
    short = responder.embed({"model": "m", "input": "x", "dimensions": 8})["data"][0]["embedding"]
    assert len(short) == 8 and abs(norm(short) - 1.0) < 1e-5
    tokens = responder.embed({"model": "m", "input": [1, 2, 3]})
    assert len(tokens["data"]) == 1 and tokens["usage"]["prompt_tokens"] == 3
    arrays = responder.embed({"model": "m", "input": [[1, 2], [3]]})
    assert len(arrays["data"]) == 2 and arrays["usage"]["prompt_tokens"] == 3


def test_base64_embeddings_decode_to_the_float_ones(responder: SyntheticResponder) -> None:
    body: dict[str, Any] = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    floats = responder.embed(body)
    encoded = responder.embed({**body, "encoding_format": "base64"})
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        raw = base64.b64decode(packed["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == plain["embedding"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "m", "input": ""}, None),
        ({"model": "m", "input": []}, None),
        ({"model": "m", "input": [["a"]]}, None),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_bad_embedding_bodies(
    responder: SyntheticResponder, body: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(ResponderError) as info:
        responder.embed(body)
    assert info.value.status_code == 400
    assert info.value.param == param


# --- through the official SDK ------------------------------------------------------------------


def sdk_client(responder: SyntheticResponder) -> openai.OpenAI:
    def handle(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        try:
            if request.url.path.endswith("/embeddings"):
                return httpx2.Response(200, json=responder.embed(body))
            return httpx2.Response(200, json=responder.chat(body))
        except ResponderError as exc:
            return httpx2.Response(exc.status_code, json=exc.envelope())

    transport = httpx2.MockTransport(handle)
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://synthetic.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def test_sdk_embeddings_default_and_float(responder: SyntheticResponder) -> None:
    client = sdk_client(responder)
    default = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["one", "two"], encoding_format="float"
    )
    assert len(default.data) == 2
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == 256
        assert a.embedding == b.embedding
        assert abs(norm(a.embedding) - 1.0) < 1e-5
    client.close()


class Verdict(BaseModel):
    label: Literal["spam", "ham"]
    confidence: float
    reasons: list[str]
    note: str | None


def test_sdk_structured_output_parses(responder: SyntheticResponder) -> None:
    client = sdk_client(responder)
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Is this spam?"}],
        response_format=Verdict,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Verdict)
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    client.close()
