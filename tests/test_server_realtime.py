"""Real-time chat completions and embeddings, and the real-time rate limits."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable

import httpx
import openai
import pytest

from batchpilot.server import LocalServer, RateLimit
from batchpilot.server.ratelimit import format_duration
from batchpilot.tokens import count_request

from helpers import client_for

ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


def test_chat_completion(local_server: LocalServer) -> None:
    client = client_for(local_server)
    answer = client.chat.completions.create(**ASK)  # type: ignore[call-overload]
    assert answer.object == "chat.completion"
    assert answer.model == "gpt-4o-mini"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == count_request(ASK, "/v1/chat/completions").tokens == 9
    ledger = local_server.admin.ledger()
    assert len(ledger) == 1 and ledger[0]["batch_id"] is None


def test_structured_output_in_real_time(local_server: LocalServer) -> None:
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    answer = client_for(local_server).chat.completions.create(
        **ASK,  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)


def test_embeddings_through_the_sdk(local_server: LocalServer) -> None:
    client = client_for(local_server)
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2
    vector = result.data[0].embedding
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    raw = httpx.post(
        f"{local_server.base_url}/embeddings",
        json={"model": "text-embedding-3-small", "input": "a", "encoding_format": "base64"},
    ).json()
    decoded = base64.b64decode(raw["data"][0]["embedding"])
    assert len(decoded) == 4 * len(vector)
    assert struct.unpack("<f", decoded[:4])[0] == pytest.approx(vector[0], rel=1e-5)


def test_unknown_model_and_streamed_embeddings_are_rejected(local_server: LocalServer) -> None:
    client = client_for(local_server)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nonexistent", messages=ASK["messages"])  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    embed = {"model": "text-embedding-3-small", "input": "a", "stream": True}
    response = httpx.post(f"{local_server.base_url}/embeddings", json=embed)
    assert response.status_code == 400
    assert (
        httpx.post(f"{local_server.base_url}/chat/completions", content=b"{oops").status_code == 400
    )


def test_missing_messages_gets_the_api_error(local_server: LocalServer) -> None:
    response = httpx.post(
        f"{local_server.base_url}/chat/completions", json={"model": "gpt-4o-mini"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_requests_per_minute_limit(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(time_scale=1e-9, rate_limits={"gpt-4o-mini": RateLimit(rpm=3)})
    url = f"{server.base_url}/chat/completions"
    answers = [httpx.post(url, json=ASK) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    assert answers[2].headers["x-ratelimit-remaining-requests"] == "0"
    limited = answers[3]
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.json()["error"]["type"] == "requests"
    assert "retry-after" in limited.headers and "retry-after-ms" in limited.headers
    server.admin.advance(20)  # one request's worth of budget refills in 20 virtual seconds
    assert httpx.post(url, json=ASK).status_code == 200
    assert len(server.admin.ledger()) == 4


def test_tokens_per_minute_limit(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(time_scale=1e-9, rate_limits={"gpt-4o-mini": RateLimit(tpm=15)})
    url = f"{server.base_url}/chat/completions"
    assert httpx.post(url, json=ASK).status_code == 200
    second = httpx.post(url, json=ASK)
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "tokens"
    assert second.headers["x-ratelimit-limit-tokens"] == "15"
    too_big = httpx.post(url, json={**ASK, "max_tokens": 100})
    assert too_big.status_code == 429
    assert "Request too large" in too_big.json()["error"]["message"]


def test_sdk_retry_honours_retry_after(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(time_scale=60.0, rate_limits={"gpt-4o-mini": RateLimit(rpm=60)})
    client = client_for(server, max_retries=5)
    started = time.monotonic()
    for _ in range(70):
        client.chat.completions.create(**ASK)  # type: ignore[call-overload]
    assert time.monotonic() - started < 30
    assert len(server.admin.ledger()) == 70


def test_requests_per_day_limit(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(time_scale=1e-9, rate_limits={"gpt-4o-mini": RateLimit(rpd=2)})
    url = f"{server.base_url}/chat/completions"
    assert [httpx.post(url, json=ASK).status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.02, "20ms"), (1, "1s"), (360, "6m0s"), (1.5, "1.5s"), (3723, "1h2m3s")]
)
def test_reset_durations_look_like_the_api(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_unknown_route_uses_the_error_envelope(local_server: LocalServer) -> None:
    response = httpx.get(f"{local_server.base_url}/nothing-here")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
