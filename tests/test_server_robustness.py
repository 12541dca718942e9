"""Bad input fails only its own request or batch, and every error uses the API's envelope."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from batchpilot.server import LocalServer
from batchpilot.server.responders.synthetic import SyntheticResponder

from helpers import by_custom_id, chat_line, client_for, read_jsonl, submit, wait_for

DEEP = "[" * 50_000


def assert_envelope(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def test_deeply_nested_line_fails_its_batch_only(local_server: LocalServer) -> None:
    client = client_for(local_server)
    bad = submit(client, [chat_line("ok-1", "fine"), DEEP, chat_line("ok-2", "fine")])
    good = submit(client, [chat_line("a", "one"), chat_line("b", "two")])

    bad = wait_for(client, bad.id)
    assert bad.status == "failed"
    assert bad.errors is not None and bad.errors.data is not None
    assert [(e.code, e.line) for e in bad.errors.data] == [("invalid_json_line", 2)]

    good = wait_for(client, good.id)
    assert good.status == "completed"
    assert set(by_custom_id(read_jsonl(client, good.output_file_id))) == {"a", "b"}
    assert local_server.admin.engine_error() is None


def test_deep_but_parseable_body_in_a_line_is_refused(local_server: LocalServer) -> None:
    client = client_for(local_server)
    line = chat_line("deep", "x", metadata_blob=json.loads("[" * 500 + "]" * 500))
    batch = wait_for(client, submit(client, [line]).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    error = batch.errors.data[0]
    assert error.line == 1 and error.code == "invalid_value"
    assert error.param is not None and error.param.startswith("body.metadata_blob")


def test_overlong_string_in_a_line_names_its_field(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(max_string_chars=100)
    client = client_for(server)
    batch = wait_for(client, submit(client, [chat_line("s", "y" * 101)]).id)
    assert batch.errors is not None and batch.errors.data is not None
    error = batch.errors.data[0]
    assert error.code == "string_above_max_length"
    assert error.param == "body.messages[0].content"


def test_overlong_line_is_refused_without_reading_it_whole(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(max_json_bytes=2000)
    client = client_for(server)
    batch = submit(client, [chat_line("big", "z" * 5000), chat_line("small", "fine")])
    batch = wait_for(client, batch.id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_request", 1)]


@pytest.mark.parametrize("path", ["/chat/completions", "/embeddings", "/batches"])
def test_deeply_nested_body_gets_the_envelope(local_server: LocalServer, path: str) -> None:
    response = httpx.post(
        local_server.base_url + path,
        content=b'{"model": "gpt-4o-mini", "input": ' + DEEP.encode() + b"}",
        headers={"content-type": "application/json"},
    )
    assert_envelope(response, 400)


def test_deep_but_parseable_real_time_body_is_refused(local_server: LocalServer) -> None:
    client = client_for(local_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"blob": json.loads("[" * 500 + "]" * 500)},
        )
    assert info.value.code == "invalid_value"


def test_overlong_real_time_string_names_its_field(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    client = client_for(local_server_factory(max_string_chars=100))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "q" * 101}]
        )
    assert info.value.code == "string_above_max_length"
    assert info.value.param == "messages[0].content"


@pytest.mark.parametrize("value", ['"many"', "[1]"])
def test_max_tokens_of_the_wrong_type_is_a_400(local_server: LocalServer, value: str) -> None:
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
    response = httpx.post(
        local_server.base_url + "/chat/completions",
        content=(body + f'"max_tokens": {value}}}').encode(),
        headers={"content-type": "application/json"},
    )
    assert assert_envelope(response, 400)["param"] == "max_tokens"


class BrokenResponder(SyntheticResponder):
    """Answers "explode" with an object no JSON encoder can write."""

    blocking = False

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        if body["messages"][0]["content"] == "explode":
            return {"unwritable": object()}
        return super().chat(body)


def test_a_batch_that_keeps_failing_fails_alone(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(responder=BrokenResponder())
    client = client_for(server)
    broken = submit(client, [chat_line("boom", "explode")])
    healthy = submit(client, [chat_line("calm", "fine")])

    assert wait_for(client, healthy.id).status == "completed"
    broken = wait_for(client, broken.id)
    assert broken.status == "failed"
    assert broken.errors is not None and broken.errors.data is not None
    assert broken.errors.data[0].code == "server_error"
    assert server.admin.engine_error() == f"batch {broken.id}: TypeError"


def test_an_unexpected_error_uses_the_envelope(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(responder=BrokenResponder())
    response = httpx.post(
        server.base_url + "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "explode"}]},
    )
    assert assert_envelope(response, 500)["type"] == "server_error"


def test_a_body_of_the_wrong_shape_fails_on_its_own_line(local_server: LocalServer) -> None:
    client = client_for(local_server)
    odd = {**chat_line("odd", "x"), "body": {"model": "gpt-4o-mini", "messages": "hello"}}
    batch = wait_for(client, submit(client, [odd, chat_line("fine", "y")]).id)
    assert batch.status == "completed"
    assert batch.request_counts.completed == 1 and batch.request_counts.failed == 1
    errors = by_custom_id(read_jsonl(client, batch.error_file_id))
    assert errors["odd"]["response"]["status_code"] == 400
    assert set(by_custom_id(read_jsonl(client, batch.output_file_id))) == {"fine"}


def test_a_body_with_too_many_values_is_refused_before_parsing(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(max_json_values=100)
    client = client_for(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="text-embedding-3-small", input=[[1]] * 200)
    assert info.value.code == "too_many_values"
    batch = submit(client, [chat_line("many", "x", extra=[{}] * 200), chat_line("few", "y")])
    batch = wait_for(client, batch.id)
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("too_many_values", 1)]


def test_data_urls_are_bounded_by_the_body_size_not_the_string_limit(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    client = client_for(local_server_factory(max_string_chars=100))
    image = "data:image/png;base64," + "A" * 400
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}
        ],
    )
    assert answer.choices[0].message.content


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/batches",
            '{"input_file_id": "file-x", "endpoint": ["/v1/embeddings"], '
            '"completion_window": "24h"}',
            "endpoint",
        ),
        (
            "/batches",
            '{"input_file_id": {"id": 1}, "endpoint": "/v1/embeddings", '
            '"completion_window": "24h"}',
            "input_file_id",
        ),
        ("/chat/completions", '{"model": "gpt-4o-mini", "messages": [], "n": NaN}', None),
    ],
)
def test_odd_values_in_a_body_get_a_400(
    local_server: LocalServer, path: str, body: str, param: str | None
) -> None:
    response = httpx.post(
        local_server.base_url + path,
        content=body.encode(),
        headers={"content-type": "application/json"},
    )
    assert assert_envelope(response, 400)["param"] == param


@pytest.mark.parametrize("seconds", ["NaN", "Infinity", "1e400", "true"])
def test_the_clock_refuses_steps_that_would_break_it(
    local_server: LocalServer, seconds: str
) -> None:
    before = local_server.admin.now()
    response = httpx.post(
        local_server.base_url.removesuffix("/v1") + "/_batchpilot/clock/advance",
        content=f'{{"seconds": {seconds}}}'.encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert before <= local_server.admin.now() < before + 3600
    client = client_for(local_server)
    assert wait_for(client, submit(client, [chat_line("t", "x")]).id).status == "completed"
