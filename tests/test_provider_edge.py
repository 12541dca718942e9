"""What the provider edge keeps to itself: one retry rule, and the only SDK imports."""

from __future__ import annotations

import json

import httpx2
import openai
import pydantic
import pytest

from batchpilot.errors import ProviderRejected, ProviderUnavailable
from batchpilot.providers.openai import translate_error
from batchpilot.providers.retry import retryable_status
from batchpilot.providers.schema import strict_json_schema
from batchpilot.run.ingest import parse_line

STATUSES = [400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 529]


@pytest.mark.parametrize("status", STATUSES)
def test_one_retry_rule_for_result_lines_and_exceptions(status: int) -> None:
    expected = status in (408, 409, 429) or status >= 500
    assert retryable_status(status) is expected
    line = {
        "custom_id": "r1",
        "response": {"status_code": status, "body": {"error": {"message": "no"}}},
    }
    parsed = parse_line(json.dumps(line).encode())
    assert parsed is not None and parsed.retryable is expected
    request = httpx2.Request("POST", "http://127.0.0.1/v1/batches")
    response = httpx2.Response(status, request=request, json={"error": {"message": "no"}})
    exc = openai.APIStatusError("no", response=response, body={"message": "no"})
    error = translate_error(exc, "creating a batch", secret=None)
    assert isinstance(error, ProviderUnavailable if expected else ProviderRejected)


def test_strict_json_schema_is_the_sdk_one() -> None:
    class Answer(pydantic.BaseModel):
        label: str
        score: float | None = None

    schema = strict_json_schema(Answer)
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == ["label", "score"]
