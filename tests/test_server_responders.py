"""The llama and proxy responders behind the full server, through the official SDK."""

from __future__ import annotations

import json
from collections.abc import Callable

import jsonschema
import pytest

from batchpilot.server import LocalServer

from helpers import by_custom_id, client_for, read_jsonl, submit, wait_for

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "sunny": {"type": "boolean"},
    },
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "weather", "strict": True, "schema": SCHEMA},
}


def structured_line(custom_id: str, question: str) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "smollm2",
            "temperature": 0,
            "max_tokens": 48,
            "messages": [{"role": "user", "content": question}],
            "response_format": FORMAT,
        },
    }


@pytest.mark.llama
def test_llama_answers_schema_valid_json_in_batch_and_real_time(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(responder="llama", validation_delay_s=0, finalizing_delay_s=0)
    client = client_for(server)

    answer = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Weather in Paris today, as JSON."}],
        response_format=FORMAT,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0,
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)

    lines = [
        structured_line("rome", "Weather in Rome?"),
        structured_line("oslo", "Weather in Oslo?"),
    ]
    batch = wait_for(client, submit(client, lines).id, timeout=120)
    assert batch.status == "completed"
    output = by_custom_id(read_jsonl(client, batch.output_file_id))
    for line in output.values():
        body = line["response"]["body"]
        assert body["model"] == "smollm2"
        assert body["usage"]["completion_tokens"] > 0
        jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), SCHEMA)
    assert sorted(output) == ["oslo", "rome"]


def test_proxy_gives_a_real_time_server_a_batch_api(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    upstream = local_server_factory(api_key="upstream-secret")
    front = local_server_factory(
        responder="proxy",
        upstream=upstream.base_url,
        upstream_api_key="upstream-secret",
        models=frozenset({"*"}),
    )
    client = client_for(front)
    lines = [
        {
            "custom_id": f"p{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"q{i}"}],
                "response_format": FORMAT,
            },
        }
        for i in range(3)
    ]
    batch = wait_for(client, submit(client, lines).id)
    assert batch.status == "completed"
    for line in read_jsonl(client, batch.output_file_id):
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(content), SCHEMA)
    upstream_runs = upstream.admin.ledger()
    assert len(upstream_runs) == 3
    assert all(row["batch_id"] is None for row in upstream_runs)
    assert sorted(row["custom_id"] for row in front.admin.ledger()) == ["p0", "p1", "p2"]


def test_proxy_reports_upstream_errors_per_line(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    upstream = local_server_factory(api_key="right-key")
    front = local_server_factory(
        responder="proxy", upstream=upstream.base_url, upstream_api_key="wrong-key"
    )
    client = client_for(front)
    batch = wait_for(
        client,
        submit(
            client,
            [
                structured_line("x", "q")
                | {"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}]}}
            ],
        ).id,
    )
    assert batch.status == "completed"
    assert batch.output_file_id is None
    (error,) = read_jsonl(client, batch.error_file_id)
    assert error["response"]["status_code"] == 401
    assert "wrong-key" not in json.dumps(error)
