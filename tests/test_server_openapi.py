"""What the local server answers validates against the official OpenAPI schemas.

One documented relaxation: the real API sends unset optional fields (a batch's `failed_at`, a
file's `status_details`) as null where the description marks them optional but not nullable, and
the server does the same; so optional properties may be null. Required fields and all types are
checked as the description says. `nullable: true` (OpenAPI 3.0's spelling, which JSON Schema
does not know) is read as "or null".
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from batchpilot.server import LocalServer

from helpers import chat_line, client_for, submit, wait_for


def _nullable_optionals(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_optionals(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_optionals(value) for key, value in node.items()}
    properties = node.get("properties")
    if isinstance(properties, dict):
        required = set(node.get("required", []))
        for name, prop in properties.items():
            if name not in required:
                properties[name] = {"anyOf": [prop, {"type": "null"}]}
    if node.get("nullable") is True:  # OpenAPI 3.0's way of saying "or null"
        del node["nullable"]
        return {"anyOf": [node, {"type": "null"}]}
    return node


SCHEMAS = _nullable_optionals(
    json.loads((Path(__file__).parent / "data" / "openai_schemas.json").read_text())["schemas"]
)


def check(name: str, instance: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": SCHEMAS}}
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=str)
    assert not errors, f"{name}: " + "; ".join(
        f"{list(e.absolute_path)}: {e.message}" for e in errors[:8]
    )


@pytest.fixture
def api(local_server: LocalServer) -> httpx.Client:
    with httpx.Client(base_url=local_server.base_url) as client:
        yield client


def test_file_objects(api: httpx.Client) -> None:
    created = api.post("/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "batch"})
    check("OpenAIFile", created.json())
    check("OpenAIFile", api.get(f"/files/{created.json()['id']}").json())
    check("ListFilesResponse", api.get("/files").json())
    check("DeleteFileResponse", api.delete(f"/files/{created.json()['id']}").json())


def test_batch_objects_in_every_state(local_server: LocalServer, api: httpx.Client) -> None:
    client = client_for(local_server)
    batch = submit(client, [chat_line("a", "q"), chat_line("b", "q")])
    check("Batch", api.get(f"/batches/{batch.id}").json())
    wait_for(client, batch.id)
    check("Batch", api.get(f"/batches/{batch.id}").json())
    failing = submit(client, ["{broken"])
    wait_for(client, failing.id)
    check("Batch", api.get(f"/batches/{failing.id}").json())
    check("ListBatchesResponse", api.get("/batches", params={"limit": 1}).json())


def test_chat_and_embeddings(api: httpx.Client) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    check("CreateChatCompletionResponse", api.post("/chat/completions", json=body).json())
    embedding = api.post(
        "/embeddings", json={"model": "text-embedding-3-small", "input": ["a", "b"]}
    )
    check("CreateEmbeddingResponse", embedding.json())


def test_batch_output_lines_carry_valid_bodies(local_server: LocalServer) -> None:
    client = client_for(local_server)
    batch = wait_for(client, submit(client, [chat_line("a", "q")]).id)
    line = json.loads(client.files.content(batch.output_file_id or "").text.splitlines()[0])
    check("CreateChatCompletionResponse", line["response"]["body"])


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/files/file-missing", {}),
        ("GET", "/batches/batch_missing", {}),
        ("POST", "/chat/completions", {"content": b"{nope"}),
        ("POST", "/batches", {"json": {"endpoint": "/v1/x"}}),
    ],
)
def test_errors(api: httpx.Client, method: str, path: str, kwargs: dict[str, Any]) -> None:
    response = api.request(method, path, **kwargs)
    assert response.status_code >= 400
    check("ErrorResponse", response.json())


def test_upload_with_sdk_shapes(local_server: LocalServer) -> None:
    created = client_for(local_server).files.create(
        file=("x.jsonl", io.BytesIO(b"{}")), purpose="batch"
    )
    check("OpenAIFile", created.model_dump(exclude_none=False))


WEATHER_TOOL = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
MOVIE_FORMAT = {
    "type": "json_schema",
    "name": "movie",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"title": {"type": "string"}},
        "required": ["title"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"text": {"format": MOVIE_FORMAT}},
        {"max_output_tokens": 1},
        {"instructions": "Be brief.", "top_logprobs": 2},
        {"tools": [{"type": "function", **WEATHER_TOOL}], "tool_choice": "required"},
    ],
)
def test_responses(api: httpx.Client, extra: dict[str, Any]) -> None:
    body = {"model": "gpt-4o-mini", "input": "Name a film, please.", **extra}
    check("Response", api.post("/responses", json=body).json())


def test_chat_with_tools_and_logprobs(api: httpx.Client) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    check(
        "CreateChatCompletionResponse",
        api.post("/chat/completions", json={**body, "logprobs": True, "top_logprobs": 2}).json(),
    )
    tools = [{"type": "function", "function": WEATHER_TOOL}]
    answer = api.post("/chat/completions", json={**body, "tools": tools, "tool_choice": "required"})
    check("CreateChatCompletionResponse", answer.json())


def test_models(api: httpx.Client) -> None:
    check("ListModelsResponse", api.get("/models").json())
    check("Model", api.get("/models/gpt-4o-mini").json())
    check("ErrorResponse", api.get("/models/no-such-model").json())


def server_sent_data(response: httpx.Response) -> list[Any]:
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data
    return [json.loads(item) for item in data if item != "[DONE]"]


def test_streamed_chunks_and_events(api: httpx.Client) -> None:
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello to everyone"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
    }
    chunks = server_sent_data(api.post("/chat/completions", json=chat))
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)
    for extra in ({}, {"tools": [{"type": "function", **WEATHER_TOOL}], "tool_choice": "required"}):
        body = {"model": "gpt-4o-mini", "input": "Name a film.", "stream": True, **extra}
        events = server_sent_data(api.post("/responses", json=body))
        for event in events:
            check("ResponseStreamEvent", event)


def test_batch_output_lines_for_responses(local_server: LocalServer) -> None:
    client = client_for(local_server)
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": "gpt-4o-mini", "input": "q", "text": {"format": MOVIE_FORMAT}},
    }
    batch = wait_for(client, submit(client, [line], endpoint="/v1/responses").id)
    check("Batch", batch.model_dump(exclude_none=False))
    output = json.loads(client.files.content(batch.output_file_id or "").text.splitlines()[0])
    check("Response", output["response"]["body"])
    check("OpenAIFile", client.files.retrieve(batch.output_file_id or "").model_dump())
