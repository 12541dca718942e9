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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from batchpilot.server import FaultPlan, LocalServer, RateLimit

from helpers import chat_line, client_for, read_jsonl, submit, wait_for


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
    with httpx.Client(base_url=local_server.base_url, timeout=60) as client:
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
        ("GET", "/no/such/path", {}),
        ("PUT", "/files", {}),
        ("POST", "/batches/batch_missing/cancel", {}),
        ("DELETE", "/files/file-missing", {}),
        ("POST", "/files", {"files": {"file": ("a", b"\xff\xfe")}, "data": {"purpose": "batch"}}),
        ("POST", "/responses", {"json": {"model": "gpt-4o-mini"}}),
        ("POST", "/embeddings", {"json": {}}),
    ],
)
def test_errors(api: httpx.Client, method: str, path: str, kwargs: dict[str, Any]) -> None:
    response = api.request(method, path, **kwargs)
    assert response.status_code >= 400
    check("ErrorResponse", response.json())


def test_errors_of_keys_limits_and_sizes(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(
        api_key="key", rate_limits={"gpt-4o-mini": RateLimit(rpm=1)}, max_upload_bytes=1000
    )
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]}
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": "Bearer key"}, timeout=60
    ) as api:
        answers = [
            httpx.get(f"{server.base_url}/models", timeout=60),
            api.post("/files", files={"file": ("a.jsonl", b"{}\n" * 600)}),
            api.post("/chat/completions", json=ask),
            api.post("/chat/completions", json=ask),
        ]
    assert [answer.status_code for answer in answers] == [401, 413, 200, 429]
    for answer in (*answers[:2], answers[3]):
        check("ErrorResponse", answer.json())


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


# The OpenAPI description at this commit no longer describes a line of a batch's output or error
# file (`BatchRequestOutput` of earlier versions); this is that object as the API reference
# gives it, with the codes it lists for a request that never got an HTTP answer.
BATCH_LINE = {
    "type": "object",
    "required": ["id", "custom_id", "response", "error"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^batch_req_"},
        "custom_id": {"type": "string"},
        "response": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["status_code", "request_id", "body"],
                    "additionalProperties": False,
                    "properties": {
                        "status_code": {"type": "integer"},
                        "request_id": {"type": "string", "pattern": "^req_"},
                        "body": {"type": "object"},
                    },
                },
            ]
        },
        "error": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"enum": ["batch_expired", "batch_cancelled", "request_timeout"]},
                        "message": {"type": "string"},
                    },
                },
            ]
        },
    },
    "oneOf": [
        {"properties": {"response": {"type": "null"}, "error": {"type": "object"}}},
        {"properties": {"response": {"type": "object"}, "error": {"type": "null"}}},
    ],
}


def check_line(line: dict[str, Any], body_schema: str) -> None:
    errors = sorted(Draft202012Validator(BATCH_LINE).iter_errors(line), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:4]]
    response = line["response"]
    if response is not None:
        ok = 200 <= response["status_code"] < 300
        check(body_schema if ok else "ErrorResponse", response["body"])


def test_output_and_error_lines_of_every_kind(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    faults = FaultPlan.model_validate(
        {
            "seed": 1,
            "faults": [
                {"kind": "line_error", "status": 429, "match": {"custom_id": "r1"}},
                {"kind": "line_error", "status": 500, "match": {"custom_id": "r2"}},
                {"kind": "line_timeout", "match": {"custom_id": "r3"}},
                {"kind": "batch_expire", "after_fraction": 0.5, "match": {"metadata": {"x": "e"}}},
            ],
        }
    )
    server = local_server_factory(faults=faults)
    client = client_for(server)
    lines = [chat_line(f"r{i}", f"question {i}") for i in range(6)]
    seen: set[str] = set()
    for metadata in ({"x": "lines"}, {"x": "e"}):
        batch = wait_for(client, submit(client, lines, metadata=metadata).id)
        check("Batch", batch.model_dump(exclude_none=False))
        for file_id in (batch.output_file_id, batch.error_file_id):
            check("OpenAIFile", client.files.retrieve(file_id or "").model_dump())
            for line in read_jsonl(client, file_id):
                check_line(line, "CreateChatCompletionResponse")
                error = line["error"]
                seen.add(error["code"] if error else str(line["response"]["status_code"]))
    assert seen == {"200", "429", "500", "request_timeout", "batch_expired"}


def test_cancelled_lines(local_server_factory: Callable[..., LocalServer]) -> None:
    server = local_server_factory(time_scale=1.0, per_request_s=0.5, cancel_delay_s=0)
    client = client_for(server)
    lines = [chat_line(f"r{i}", f"question {i}") for i in range(40)]
    batch = wait_for(client, submit(client, lines).id, {"in_progress"})
    client.batches.cancel(batch.id)
    batch = wait_for(client, batch.id)
    assert batch.status == "cancelled"
    check("Batch", batch.model_dump(exclude_none=False))
    errors = read_jsonl(client, batch.error_file_id)
    assert errors and {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    for line in errors:
        check_line(line, "CreateChatCompletionResponse")


EMBED = {"model": "text-embedding-3-small", "input": "a film"}


def test_batches_and_lines_on_the_embeddings_endpoint(local_server: LocalServer) -> None:
    client = client_for(local_server)
    line = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": EMBED}
    batch = wait_for(client, submit(client, [line], endpoint="/v1/embeddings").id)
    check("Batch", batch.model_dump(exclude_none=False))
    (output,) = read_jsonl(client, batch.output_file_id)
    check_line(output, "CreateEmbeddingResponse")
