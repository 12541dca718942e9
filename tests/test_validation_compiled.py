"""An answer's schema is checked by the compiled validator (`jsonschema_rs`) where it reads the
schema as `jsonschema` does, and the verdicts and reasons are those `jsonschema` alone gives."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from batchpilot.validate import AnswerCheck, compiled_verdict

DEATHS = {
    "type": "object",
    "properties": {
        "deaths": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "cause": {"type": "string"},
                    "on_screen": {"type": "boolean"},
                    "age": {"type": ["integer", "null"], "minimum": 0},
                },
                "required": ["name", "cause", "on_screen", "age"],
                "additionalProperties": False,
            },
            "maxItems": 3,
        },
        "tone": {"type": "string", "enum": ["sad", "happy", "dark"]},
        "score": {"type": "number", "exclusiveMaximum": 10},
        "mood": {"anyOf": [{"$ref": "#/$defs/mood"}, {"type": "null"}]},
    },
    "required": ["deaths", "tone", "score", "mood"],
    "additionalProperties": False,
    "$defs": {"mood": {"type": "object", "properties": {"word": {"const": "grim"}}}},
}


def death(**fields: Any) -> dict[str, Any]:
    return {"name": "Tom", "cause": "poison", "on_screen": True, "age": 40, **fields}


ANSWERS: list[Any] = [
    {"deaths": [death()], "tone": "sad", "score": 9.5, "mood": None},
    {"deaths": [], "tone": "dark", "score": -1, "mood": {"word": "grim"}},
    {"deaths": [death(age=None)], "tone": "happy", "score": 0, "mood": {}},
    {"deaths": [death(age=40.0)], "tone": "sad", "score": 1, "mood": None},  # 40.0 is an integer
    {"deaths": [death(age=2**70)], "tone": "sad", "score": 1, "mood": None},
    {"deaths": [death(age=-1)], "tone": "sad", "score": 1, "mood": None},
    {"deaths": [death(name="")], "tone": "sad", "score": 1, "mood": None},
    {"deaths": [death(on_screen=1)], "tone": "sad", "score": 1, "mood": None},
    {"deaths": [death(age=True)], "tone": "sad", "score": 1, "mood": None},
    {"deaths": [death(extra=1)], "tone": "sad", "score": 1, "mood": None},
    {"deaths": [death()] * 4, "tone": "sad", "score": 1, "mood": None},
    {"deaths": [death()], "tone": "grim", "score": 1, "mood": None},
    {"deaths": [death()], "tone": "sad", "score": 10, "mood": None},
    {"deaths": [death()], "tone": "sad", "score": float("nan"), "mood": None},
    {"deaths": [death()], "tone": "sad", "score": 1, "mood": {"word": "glad"}},
    {"deaths": [death()], "tone": "sad", "score": 1},
    {"tone": "sad"},
    [],
    "text",
    None,
]


def chat(content: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": None}
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def jsonschema_alone(schema: dict[str, Any], answer: Any) -> str | None:
    """The reason the check gave before the compiled validator: `jsonschema`'s first error."""
    problem = next(iter(jsonschema.Draft202012Validator(schema).iter_errors(answer)), None)
    if problem is None:
        return None
    where = "/".join(str(part) for part in problem.absolute_path) or "(root)"
    return f"schema: at {where}: {problem.message[:200]}"


def test_a_plain_schema_is_checked_by_the_compiled_validator() -> None:
    verdict = compiled_verdict(DEATHS)
    assert verdict is not None and AnswerCheck(DEATHS).valid is not None
    assert verdict(ANSWERS[0]) is True and verdict(ANSWERS[5]) is False


@pytest.mark.parametrize("number", range(len(ANSWERS)))
def test_every_answer_gets_the_verdict_and_reason_jsonschema_gives(number: int) -> None:
    answer = ANSWERS[number]
    content = json.dumps(answer)  # NaN and integers past 64 bits as Python writes them
    check = AnswerCheck(DEATHS)
    assert check(chat(content)) == jsonschema_alone(DEATHS, json.loads(content))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"code": {"type": "string", "pattern": "^\\d+$"}}},
        {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}},
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}},
        {"$defs": {"b": {"$ref": "other.json#/b"}}, "type": "object"},
    ],
)
def test_a_schema_either_may_read_otherwise_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    # regular expressions (Python's `re` against ECMA's: `\d` takes "٣" in one alone) and
    # references outside the schema (which the compiled validator would fetch)
    assert compiled_verdict(schema) is None
    check = AnswerCheck(schema)
    assert check.valid is None
    if "pattern" in json.dumps(schema):
        assert check(chat('{"code": "٣"}')) == jsonschema_alone(schema, {"code": "٣"})


def test_invalid_json_says_what_python_says() -> None:
    reason = AnswerCheck(DEATHS)(chat('{"deaths": ['))
    assert reason is not None and reason.startswith("invalid_json: Expecting value")
