"""What the local server answers validates against the official OpenAPI schemas.

One documented relaxation: the real API sends unset optional fields (a batch's `failed_at`, a
file's `status_details`) as null where the description marks them optional but not nullable, and
the server does the same; so optional properties may be null. Required fields and all types are
checked as the description says.
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
