"""What the local server answers looks like what the API answers, through the official SDK:
models, request ids, one clock, output expiry, log probabilities, tool calls and streaming."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from batchpilot.server import LocalServer

from helpers import chat_line, client_for, submit, wait_for

ASK: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello to the whole wide world"}],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def test_models_are_listed_and_retrieved(local_server: LocalServer) -> None:
    client = client_for(local_server)
    names = [model.id for model in client.models.list()]
    assert "gpt-4o-mini" in names
    model = client.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object) == ("gpt-4o-mini", "model")
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_every_answer_has_a_request_id(local_server: LocalServer) -> None:
    base = local_server.base_url
    answers = [
        httpx.get(f"{base}/models"),
        httpx.get(f"{base}/files/file-missing"),
        httpx.post(f"{base}/chat/completions", json=ASK),
        httpx.post(f"{base}/chat/completions", content=b"{nope"),
        httpx.get(f"{base}/no/such/path"),
        httpx.post(f"{base}/responses", json={"model": "gpt-4o-mini", "input": "hi"}),
        httpx.post(f"{base}/embeddings", json={"model": "text-embedding-3-small", "input": "a"}),
        httpx.post(f"{base}/chat/completions", json={**ASK, "stream": True}),
        httpx.post(f"{base}/files", files={"file": ("upload", b"{}")}, data={"purpose": "batch"}),
        httpx.post(f"{base}/batches", json={"input_file_id": "file-missing"}),
    ]
    ids = [answer.headers.get("x-request-id") or "" for answer in answers]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_chat_timestamps_follow_the_virtual_clock(local_server: LocalServer) -> None:
    local_server.admin.advance(30 * 86_400)
    client = client_for(local_server)
    before = local_server.admin.now()
    created = client.chat.completions.create(**ASK).created
    assert int(before) <= created <= local_server.admin.now()
    batch = wait_for(client, submit(client, [chat_line("a", "q")]).id)
    line = json.loads(client.files.content(batch.output_file_id or "").text)
    assert batch.created_at <= line["response"]["body"]["created"] <= local_server.admin.now()


def test_every_timestamp_follows_the_virtual_clock(local_server: LocalServer) -> None:
    local_server.admin.advance(40 * 86_400)
    client = client_for(local_server)
    before = int(local_server.admin.now())
    stamps = {
        "responses": client.responses.create(model="gpt-4o-mini", input="hi").created_at,
        "completions": client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="hi"
        ).created,
        "images": client.images.generate(model="gpt-image-1", prompt="a kite").created,
        "file": client.files.create(file=b'{"a": 1}\n', purpose="batch").created_at,
    }
    with client.chat.completions.create(**ASK, stream=True) as chunks:
        stamps["chat chunks"] = min(chunk.created for chunk in chunks)
    with client.responses.create(model="gpt-4o-mini", input="hi", stream=True) as events:
        stamps["response events"] = min(
            event.response.created_at for event in events if hasattr(event, "response")
        )
    after = local_server.admin.now()
    assert {name: before <= stamp <= after for name, stamp in stamps.items()} == dict.fromkeys(
        stamps, True
    ), (before, stamps)


def test_output_files_expire_as_the_batch_asked(local_server: LocalServer) -> None:
    client = client_for(local_server)
    file_id = client.files.create(
        file=("in.jsonl", json.dumps(chat_line("a", "q")).encode()), purpose="batch"
    ).id
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    batch = wait_for(client, batch.id)
    output = client.files.retrieve(batch.output_file_id or "")
    assert output.expires_at == output.created_at + 3600
    local_server.admin.advance(3601)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(output.id)
    assert output.id not in [f.id for f in client.files.list()]
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 60},
        )
    assert info.value.param == "output_expires_after.seconds"


def test_logprobs_in_the_api_shape(local_server: LocalServer) -> None:
    answer = client_for(local_server).chat.completions.create(**ASK, logprobs=True, top_logprobs=3)
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0 and bytes(token.bytes or []).decode() == token.token
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token
        assert [t.logprob for t in token.top_logprobs] == sorted(
            (t.logprob for t in token.top_logprobs), reverse=True
        )
    plain = client_for(local_server).chat.completions.create(**ASK)
    assert plain.choices[0].logprobs is None


def test_tool_calls_are_answered_when_tools_are_given(local_server: LocalServer) -> None:
    client = client_for(local_server)
    answer = client.chat.completions.create(
        **ASK,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]

    required = client.chat.completions.create(
        **ASK,
        tools=[TIME],  # type: ignore[list-item]
        tool_choice="required",
    )
    assert required.choices[0].message.tool_calls
    none = client.chat.completions.create(
        **ASK,
        tools=[TIME],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content

    call = calls[0]
    follow_up = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            *ASK["messages"],
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert follow_up.choices[0].finish_reason == "stop"


def test_responses_answer_function_calls(local_server: LocalServer) -> None:
    tool = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]
    response = client_for(local_server).responses.create(
        model="gpt-4o-mini", input="Weather?", tools=[tool], tool_choice="required"
    )
    call = response.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_chat_streams_through_the_sdk(local_server: LocalServer) -> None:
    client = client_for(local_server)
    whole = client.chat.completions.create(**ASK)
    chunks = list(
        client.chat.completions.create(**ASK, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens

    with client.chat.completions.stream(
        **ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_responses_stream_through_the_sdk(local_server: LocalServer) -> None:
    client = client_for(local_server)
    whole = client.responses.create(model="gpt-4o-mini", input="Say hello to everyone here")
    events = list(
        client.responses.create(
            model="gpt-4o-mini", input="Say hello to everyone here", stream=True
        )
    )
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text
    with client.responses.stream(model="gpt-4o-mini", input="Say hello to everyone here") as stream:
        assert stream.get_final_response().output_text == whole.output_text


@pytest.mark.llama
def test_llama_calls_tools_streams_and_answers_logprobs(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(responder="llama", validation_delay_s=0, finalizing_delay_s=0)
    client = client_for(server)
    ask: dict[str, Any] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "max_tokens": 8,
    }
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    answer = client.chat.completions.create(
        **{**ask, "max_tokens": 40},
        tools=[tool, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    call = (answer.choices[0].message.tool_calls or [])[0]
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), parameters)

    probed = client.chat.completions.create(**ask, logprobs=True, top_logprobs=2)
    entries = probed.choices[0].logprobs.content if probed.choices[0].logprobs else None
    assert entries and all(len(entry.top_logprobs) == 2 for entry in entries)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(**ask, stream=True, temperature=0)
        if chunk.choices
    )
    whole = client.chat.completions.create(**ask, temperature=0)
    assert text == whole.choices[0].message.content
