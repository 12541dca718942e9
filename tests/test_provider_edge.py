"""What the provider edge keeps to itself: one retry rule, and the only SDK imports."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import httpx2
import openai
import pydantic
import pytest

import batchpilot
from batchpilot.errors import ProviderRejected, ProviderUnavailable
from batchpilot.providers import BatchTags
from batchpilot.providers.openai import translate_error
from batchpilot.providers.openai_batch import file_name, metadata, tags_of
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


def test_tags_travel_in_batch_metadata() -> None:
    tags = BatchTags("run-1", 7, "store-1", name="batchpilot-store-1-run-1-7.jsonl")
    assert tags_of(metadata(tags)) == BatchTags("run-1", 7, "store-1")
    assert tags_of({"batchpilot_run": "run-1", "batchpilot_batch": "07"}) == BatchTags(
        "run-1", None, None
    )
    assert tags_of({"run": "r1"}) is None and tags_of(None) is None
    assert file_name(BatchTags("run-1", 7, "s")) == "batchpilot-s-run-1-7.jsonl"


SDKS = ("openai", "anthropic", "google.genai")


def test_only_the_providers_import_an_llm_sdk() -> None:
    source = Path(batchpilot.__file__).parent
    found = []
    for path in sorted(source.rglob("*.py")):
        inside = path.relative_to(source).parts[0]
        if inside in ("providers", "server") or path.name == "testing.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [
                f"{path.relative_to(source)}: {name}"
                for name in names
                if any(name == sdk or name.startswith(sdk + ".") for sdk in SDKS)
            ]
    assert found == []
