"""The Responses API: real time and batches through the SDK, answers read from the raw body."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from batchpilot.answers import answer_of, response_content
from batchpilot.server import LocalServer
from batchpilot.server.faults import FaultPlan
from batchpilot.validate import AnswerCheck

from helpers import by_custom_id, client_for, read_jsonl, submit, wait_for

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer", "minimum": 1900}},
    "required": ["title", "year"],
    "additionalProperties": False,
}
FORMAT = {"format": {"type": "json_schema", "name": "movie", "schema": SCHEMA, "strict": True}}


def responses_line(custom_id: str, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "gpt-4o-mini")
    body.setdefault("input", "Name a film.")
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def test_real_time_response_with_a_schema(local_server: LocalServer) -> None:
    client = client_for(local_server)
    before = local_server.admin.now()
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini",
        instructions="Answer in JSON.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Name a film."}]}],
        text=FORMAT,  # type: ignore[arg-type]
    )
    body = raw.http_response.json()
    assert "output_text" not in body  # an SDK convenience, not part of the wire format
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["type"] == "message"
    assert body["output"][0]["content"][0]["type"] == "output_text"
    text, _ = response_content(body)
    jsonschema.validate(json.loads(text or ""), SCHEMA)
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert raw.parse().output_text == text
    assert int(before) <= body["created_at"] <= local_server.admin.now()
    assert AnswerCheck(SCHEMA)(body) is None


def test_max_output_tokens_leaves_the_response_incomplete(local_server: LocalServer) -> None:
    client = client_for(local_server)
    response = client.responses.create(
        model="gpt-4o-mini", input="Say a long sentence about many things", max_output_tokens=2
    )
    body = response.model_dump()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response.usage is not None and response.usage.output_tokens <= 2
    answer = answer_of(body)
    assert answer is not None and answer.truncated
    assert AnswerCheck(SCHEMA)(body) == (
        "truncated: the answer hit its token limit (finish_reason length)"
    )


def test_refusals_are_read_from_refusal_content() -> None:
    body = {
        "object": "response",
        "status": "completed",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": "I can't help with that."}],
            }
        ],
    }
    assert response_content(body) == (None, None)
    assert AnswerCheck(SCHEMA)(body) == "refused: I can't help with that."


def test_responses_batch(local_server: LocalServer) -> None:
    client = client_for(local_server)
    lines = [responses_line("a", text=FORMAT), responses_line("b", max_output_tokens=1)]
    batch = wait_for(client, submit(client, lines, endpoint="/v1/responses").id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 2
    out = by_custom_id(read_jsonl(client, batch.output_file_id))
    first = out["a"]["response"]["body"]
    assert first["object"] == "response"
    jsonschema.validate(json.loads(response_content(first)[0] or ""), SCHEMA)
    assert out["b"]["response"]["body"]["status"] == "incomplete"


def test_responses_batch_rejects_lines_for_another_url(local_server: LocalServer) -> None:
    client = client_for(local_server)
    line = responses_line("a")
    line["url"] = "/v1/chat/completions"
    batch = wait_for(client, submit(client, [line], endpoint="/v1/responses").id)
    assert batch.status == "failed" and batch.errors is not None
    assert batch.errors.data and batch.errors.data[0].code == "invalid_url"


def test_proxy_answers_responses_in_real_time_and_in_batches(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    upstream = local_server_factory()
    front = local_server_factory(
        responder="proxy", upstream=upstream.base_url, models=frozenset({"*"})
    )
    client = client_for(front)
    response = client.responses.create(
        model="gpt-4o-mini",
        input="Name a film.",
        text=FORMAT,  # type: ignore[arg-type]
    )
    jsonschema.validate(json.loads(response_content(response.model_dump())[0] or ""), SCHEMA)
    batch = wait_for(
        client, submit(client, [responses_line("a", text=FORMAT)], endpoint="/v1/responses").id
    )
    body = read_jsonl(client, batch.output_file_id)[0]["response"]["body"]
    jsonschema.validate(json.loads(response_content(body)[0] or ""), SCHEMA)
    assert [row["endpoint"] for row in upstream.admin.ledger()] == ["/v1/chat/completions"] * 2


@pytest.mark.llama
def test_llama_answers_responses_with_a_schema(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    server = local_server_factory(responder="llama", validation_delay_s=0, finalizing_delay_s=0)
    client = client_for(server)
    response = client.responses.create(
        model="smollm2",
        input="A film as JSON.",
        text=FORMAT,  # type: ignore[arg-type]
        max_output_tokens=48,
        temperature=0,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response_content(response.model_dump())[0] or ""), SCHEMA)
    assert response.usage is not None and response.usage.output_tokens > 0


def test_content_faults_reach_responses_in_their_shape(
    local_server_factory: Callable[..., LocalServer],
) -> None:
    faults = FaultPlan.model_validate(
        {
            "seed": 1,
            "faults": [
                {"kind": "refusal", "match": {"custom_id": "r0"}},
                {"kind": "length", "match": {"custom_id": "r1"}},
                {"kind": "schema_violation", "match": {"custom_id": "r2"}},
            ],
        }
    )
    server = local_server_factory(faults=faults)
    client = client_for(server)
    lines = [responses_line(f"r{i}", text=FORMAT) for i in range(4)]
    batch = wait_for(client, submit(client, lines, endpoint="/v1/responses").id)
    out = by_custom_id(read_jsonl(client, batch.output_file_id))
    verdicts = {key: AnswerCheck(SCHEMA)(line["response"]["body"]) for key, line in out.items()}
    assert (verdicts["r0"] or "").startswith("refused: ")
    assert out["r0"]["response"]["body"]["output"][0]["content"][0]["type"] == "refusal"
    assert (verdicts["r1"] or "").startswith("truncated: ")
    assert out["r1"]["response"]["body"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert (verdicts["r2"] or "").startswith("schema: ")
    assert verdicts["r3"] is None
