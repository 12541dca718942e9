"""The proxy responder against a real HTTP upstream running in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from batchpilot.server.responders.base import Responder, ResponderError
from batchpilot.server.responders.proxy import ProxyResponder

API_KEY = "sk-test-secret-123"


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    envelope = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(envelope, status_code=status)


class Upstream:
    """A small OpenAI-compatible upstream that records what it received."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    async def _checked(self, request: Request) -> dict[str, Any] | Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        body: dict[str, Any] = await request.json()
        self.bodies.append(body)
        failure = _FAILURES.get(str(body.get("model")))
        return failure() if failure is not None else body

    async def chat(self, request: Request) -> Response:
        body = await self._checked(request)
        if isinstance(body, Response):
            return body
        content = body["messages"][-1]["content"]
        return JSONResponse(
            {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"echo: {content}"},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    async def embeddings(self, request: Request) -> Response:
        body = await self._checked(request)
        if isinstance(body, Response):
            return body
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), 1.0]}
            for i, text in enumerate(inputs)
        ]
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )


_FAILURES: dict[str, Any] = {
    "fail-429": lambda: _error(
        429, "Rate limit reached for requests.", "requests", "rate_limit_exceeded"
    ),
    "fail-500": lambda: _error(500, "The server had an error.", "server_error"),
    "fail-text": lambda: PlainTextResponse("upstream exploded " * 100, status_code=503),
}


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream()
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "upstream did not start"
        time.sleep(0.01)
    try:
        yield app, f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def proxy(upstream: tuple[Upstream, str]) -> Iterator[ProxyResponder]:
    responder = ProxyResponder(upstream[1] + "/", api_key=API_KEY, timeout=10)
    yield responder
    responder.close()


def _chat(model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def test_is_a_responder(proxy: ProxyResponder) -> None:
    assert isinstance(proxy, Responder)
    assert proxy.name == "proxy"


def test_forwards_chat_without_stream(
    proxy: ProxyResponder, upstream: tuple[Upstream, str]
) -> None:
    answer = proxy.chat(_chat(stream=True, stream_options={"include_usage": True}, seed=3))

    assert answer["choices"][0]["message"]["content"] == "echo: hello"
    assert answer["model"] == "gpt-4o-mini"
    assert answer["usage"]["total_tokens"] == 5
    received = upstream[0].bodies[-1]
    assert "stream" not in received
    assert "stream_options" not in received
    assert received["seed"] == 3


def test_forwards_embeddings(proxy: ProxyResponder) -> None:
    result = proxy.embed({"model": "text-embedding-3-small", "input": ["a", "bcd"]})
    assert [item["embedding"][0] for item in result["data"]] == [1.0, 3.0]
    assert result["usage"]["prompt_tokens"] == 2


def test_concurrent_requests_share_one_client(proxy: ProxyResponder) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: proxy.chat(_chat(f"m-{i}")), range(16)))
    assert [answer["model"] for answer in answers] == [f"m-{i}" for i in range(16)]


@pytest.mark.parametrize(
    ("model", "status", "type_", "code"),
    [
        ("fail-429", 429, "requests", "rate_limit_exceeded"),
        ("fail-500", 500, "server_error", None),
    ],
)
def test_upstream_error_envelope_is_kept(
    proxy: ProxyResponder, model: str, status: int, type_: str, code: str | None
) -> None:
    with pytest.raises(ResponderError) as caught:
        proxy.chat(_chat(model))
    error = caught.value
    assert (error.status_code, error.type, error.code) == (status, type_, code)
    assert error.envelope()["error"]["message"] == error.message


def test_upstream_text_error_is_truncated(proxy: ProxyResponder) -> None:
    with pytest.raises(ResponderError) as caught:
        proxy.embed({"model": "fail-text", "input": "x"})
    assert caught.value.status_code == 503
    assert caught.value.type == "server_error"
    assert "upstream exploded" in caught.value.message
    assert len(caught.value.message) < 700


def test_api_key_is_sent_as_bearer(upstream: tuple[Upstream, str]) -> None:
    responder = ProxyResponder(upstream[1], api_key="sk-wrong")
    try:
        with pytest.raises(ResponderError) as caught:
            responder.chat(_chat())
    finally:
        responder.close()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_unreachable_upstream_is_a_502_without_the_key() -> None:
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/v1"
    responder = ProxyResponder(url, api_key=API_KEY, timeout=5)
    try:
        with pytest.raises(ResponderError) as caught:
            responder.chat(_chat())
    finally:
        responder.close()
    error = caught.value
    assert error.status_code == 502
    assert error.type == "server_error"
    assert f"{url}/chat/completions" in error.message
    assert API_KEY not in error.message
    assert API_KEY not in repr(responder)


def test_given_client_is_left_open(upstream: tuple[Upstream, str]) -> None:
    with httpx.Client() as client:
        responder = ProxyResponder(upstream[1], api_key=API_KEY, http_client=client)
        assert responder.embed({"model": "e", "input": "hi"})["object"] == "list"
        responder.close()
        assert not client.is_closed
