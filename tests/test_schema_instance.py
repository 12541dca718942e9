from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import random
import re
import uuid
from collections.abc import Callable
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel, Field

from batchpilot.server import regex_sample
from batchpilot.server.schema_instance import instance_for_schema

Schema = dict[str, Any]

PATTERNS = [
    r"^[A-Z]{2}-\d{3}$",
    r"^[a-z]+(_[a-z]+)*$",
    r"^\+?[0-9]{7,12}$",
    r"^#[0-9a-fA-F]{6}$",
    r"^v\d+\.\d+\.\d+(-(alpha|beta|rc)\.\d+)?$",
    r"^(GET|POST|DELETE) /[a-z/]*$",
    r"^[A-Za-z0-9._%+-]+@[a-z]+\.(com|org|net)$",
    r"^\S+ \S+$",
    r"[^\s]{4}",
    r"^\w{3,8}$",
]
FORMATS = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
    "uri",
]
NAMES = ["id", "name", "title", "count", "price", "tags", "status", "owner", "notes", "score"]

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_TIME = re.compile(r"^\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$")

# jsonschema checks these formats only with optional packages, which are not installed.
EXTRA_FORMATS = FormatChecker()


def _iso_parses(parse: Callable[[str], object], value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


_EXTRA_CHECKS: dict[str, Callable[[str], bool]] = {
    "date-time": lambda v: bool(_DATE_TIME.match(v)) and _iso_parses(dt.datetime.fromisoformat, v),
    "time": lambda v: bool(_TIME.match(v)) and _iso_parses(dt.time.fromisoformat, v),
    "duration": lambda v: bool(_DURATION.match(v)),
    "hostname": lambda v: bool(_HOSTNAME.match(v)),
    "uri": lambda v: bool(_URI.match(v)),
}
for _name, _check in _EXTRA_CHECKS.items():
    EXTRA_FORMATS.checks(_name)(
        functools.partial(lambda c, v: not isinstance(v, str) or c(v), _check)
    )


def assert_valid(schema: Schema, instance: Any) -> None:
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(
        instance
    )
    Draft202012Validator(schema, format_checker=EXTRA_FORMATS).validate(instance)
    assert json.loads(json.dumps(instance)) == instance


# --- schema strategies -------------------------------------------------------------------------


@st.composite
def string_schemas(draw: st.DrawFn) -> Schema:
    kind = draw(st.sampled_from(["plain", "bounds", "pattern", "format", "enum"]))
    if kind == "bounds":
        lo = draw(st.integers(0, 12))
        return {"type": "string", "minLength": lo, "maxLength": lo + draw(st.integers(0, 20))}
    if kind == "pattern":
        return {"type": "string", "pattern": draw(st.sampled_from(PATTERNS))}
    if kind == "format":
        return {"type": "string", "format": draw(st.sampled_from(FORMATS))}
    if kind == "enum":
        values = draw(st.lists(st.sampled_from(["red", "green", "blue", "n/a"]), min_size=1))
        return {"type": "string", "enum": sorted(set(values))}
    return {"type": "string"}


@st.composite
def integer_schemas(draw: st.DrawFn) -> Schema:
    schema: Schema = {"type": "integer"}
    step = draw(st.sampled_from([None, 2, 3, 5, 10]))
    lo = draw(st.integers(-100, 100))
    hi = lo + draw(st.integers(2 * (step or 1) + 2, 500))
    if draw(st.booleans()):
        schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = lo
    if draw(st.booleans()):
        schema[draw(st.sampled_from(["maximum", "exclusiveMaximum"]))] = hi
    if step:
        schema["multipleOf"] = step
    return schema


@st.composite
def number_schemas(draw: st.DrawFn) -> Schema:
    schema: Schema = {"type": "number"}
    step = draw(st.sampled_from([None, 0.5, 0.25, 0.1, 0.05, 0.01, 2.5]))
    lo = draw(st.integers(-1000, 1000)) / 10
    hi = lo + max(1.0, 3 * (step or 0)) + draw(st.integers(0, 1000)) / 7
    if draw(st.booleans()):
        schema[draw(st.sampled_from(["minimum", "exclusiveMinimum"]))] = lo
    if draw(st.booleans()):
        schema[draw(st.sampled_from(["maximum", "exclusiveMaximum"]))] = hi
    if step:
        schema["multipleOf"] = step
    return schema


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["yes", "no", "maybe"])
)
leaf_schemas = st.one_of(
    string_schemas(),
    integer_schemas(),
    number_schemas(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(json_scalars, min_size=1, max_size=4).map(lambda values: {"enum": values}),
    st.one_of(json_scalars, st.lists(json_scalars, max_size=3)).map(lambda v: {"const": v}),
)


@st.composite
def object_schemas(draw: st.DrawFn, children: st.SearchStrategy[Schema]) -> Schema:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    schema: Schema = {
        "type": "object",
        "properties": {name: draw(children) for name in names},
        "required": [name for name in names if draw(st.booleans())],
    }
    additional = draw(st.sampled_from(["absent", False, True, {"type": "integer"}]))
    if additional != "absent":
        schema["additionalProperties"] = additional
    return schema


@st.composite
def array_schemas(draw: st.DrawFn, children: st.SearchStrategy[Schema]) -> Schema:
    unique = draw(st.booleans())
    items = {"type": "string"} if unique else draw(children)
    lo = draw(st.integers(0, 2))
    schema: Schema = {"type": "array", "items": items, "minItems": lo}
    if draw(st.booleans()):
        schema["maxItems"] = lo + draw(st.integers(0, 3))
    if unique:
        schema["uniqueItems"] = True
    return schema


def nullable(children: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    def make_nullable(schema: Schema) -> Schema:
        if isinstance(schema.get("type"), str) and "enum" not in schema and "const" not in schema:
            return {**schema, "type": [schema["type"], "null"]}
        return {"anyOf": [schema, {"type": "null"}]}

    return children.map(make_nullable)


def schemas(depth: int) -> st.SearchStrategy[Schema]:
    if depth == 0:
        return leaf_schemas
    children = schemas(depth - 1)
    return st.one_of(
        leaf_schemas,
        object_schemas(children),
        array_schemas(children),
        st.lists(children, min_size=2, max_size=3).map(lambda branches: {"anyOf": branches}),
        nullable(children),
    )


@st.composite
def schemas_with_defs(draw: st.DrawFn) -> Schema:
    defs = draw(
        st.dictionaries(st.sampled_from(["Address", "Item", "Money"]), schemas(1), min_size=1)
    )
    refs = st.sampled_from(sorted(defs)).map(lambda name: {"$ref": f"#/$defs/{name}"})
    body = draw(object_schemas(st.one_of(refs, nullable(refs), schemas(1))))
    return {**body, "$defs": defs}


@st.composite
def recursive_schemas(draw: st.DrawFn) -> Schema:
    node = {"$ref": "#/$defs/Node"}
    properties = {
        "value": draw(leaf_schemas),
        "children": {"type": "array", "items": node},
        "parent": {"anyOf": [node, {"type": "null"}]},
        "next": {"anyOf": [{"type": "null"}, node]},
    }
    required = [name for name in properties if draw(st.booleans())]
    definition = {"type": "object", "properties": properties, "required": required}
    return {"$defs": {"Node": definition}, "$ref": "#/$defs/Node"}


all_schemas = st.one_of(schemas(3), schemas_with_defs(), recursive_schemas())


# --- property tests ----------------------------------------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schema=all_schemas, seed=st.text(max_size=8))
def test_instances_are_valid_and_deterministic(schema: Schema, seed: str) -> None:
    instance = instance_for_schema(schema, seed)
    assert_valid(schema, instance)
    assert instance_for_schema(schema, seed) == instance


@settings(max_examples=50, deadline=None, database=None)
@given(pattern=st.sampled_from(PATTERNS), seed=st.text(max_size=8))
def test_patterns_match(pattern: str, seed: str) -> None:
    value = instance_for_schema({"type": "string", "pattern": pattern}, seed)
    assert re.search(pattern, value)


def test_different_seeds_usually_differ() -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "count": {"type": "integer"},
            "code": {"type": "string", "pattern": PATTERNS[0]},
        },
        "required": ["title", "count", "code"],
    }
    values = {json.dumps(instance_for_schema(schema, str(seed))) for seed in range(50)}
    assert len(values) >= 45


# --- explicit schemas --------------------------------------------------------------------------


STRICT_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": ["integer", "null"]},
        "email": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            "required": ["street", "city"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "email", "sentiment", "address", "tags"],
    "additionalProperties": False,
}

STRICT_RECURSIVE_UI: Schema = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["div", "button", "header", "section", "field"]},
        "label": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#"}},
        "attributes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                "required": ["name", "value"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["type", "label", "children", "attributes"],
    "additionalProperties": False,
}

STRICT_LINKED_LIST: Schema = {
    "type": "object",
    "properties": {"linked_list": {"$ref": "#/$defs/linked_list_node"}},
    "$defs": {
        "linked_list_node": {
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "next": {"anyOf": [{"$ref": "#/$defs/linked_list_node"}, {"type": "null"}]},
            },
            "additionalProperties": False,
            "required": ["next", "value"],
        }
    },
    "additionalProperties": False,
    "required": ["linked_list"],
}


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("schema", [STRICT_SCHEMA, STRICT_RECURSIVE_UI, STRICT_LINKED_LIST])
def test_openai_strict_mode_schemas(schema: Schema) -> None:
    for seed in range(40):
        instance = instance_for_schema(schema, f"strict-{seed}")
        assert_valid(schema, instance)
        assert list(instance) == schema["required"] or set(instance) == set(schema["required"])
        assert _depth(instance) <= 12


def test_strict_mode_keeps_schema_property_order() -> None:
    instance = instance_for_schema(STRICT_SCHEMA, "order")
    assert list(instance) == list(STRICT_SCHEMA["properties"])
    assert list(instance["address"]) == ["street", "city"]


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    zip_code: str = Field(pattern=r"^\d{5}$")
    country: Literal["US", "CA"]


class Person(BaseModel):
    name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=0, le=130)
    score: float = Field(gt=0, lt=1)
    favourite: Colour
    nickname: str | None = None
    addresses: list[Address]
    primary: Address | None
    tags: list[str] = Field(default_factory=list, max_length=5)
    kind: Literal["person"] = "person"
    created: dt.datetime
    id: uuid.UUID
    friends: list[Person] = []


def test_pydantic_generated_schema() -> None:
    schema = Person.model_json_schema()
    for seed in range(40):
        instance = instance_for_schema(schema, str(seed))
        assert_valid(schema, instance)
        person = Person.model_validate(instance)
        assert person.kind == "person"


# --- the private regex parser, guarded --------------------------------------------------------


def test_without_the_private_regex_parser_text_checked_against_the_pattern_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(regex_sample, "_parser", None)
    regex_sample.compile_pattern.cache_clear()
    try:
        assert not regex_sample.parser_available()
        assert regex_sample.compile_pattern(r"^[a-z ]+$")[1] is None
        value = instance_for_schema({"type": "string", "pattern": r"^[a-z ]+$"}, "seed")
        assert re.search(r"^[a-z ]+$", value)
        with pytest.raises(ValueError, match="could not produce a string matching the pattern"):
            instance_for_schema({"type": "string", "pattern": r"^\d{5}$"}, "seed")
    finally:
        regex_sample.compile_pattern.cache_clear()


def test_a_parse_tree_of_an_unknown_shape_is_unsupported_not_a_crash() -> None:
    writer = regex_sample.RegexWriter(random.Random(0), 3, greedy=False)
    for tree in ([("not an op",)], [(object(), 1)], [(regex_sample._op.IN, None)], None):
        with pytest.raises(regex_sample.UnsupportedRegex):
            writer.write(tree)
    assert regex_sample._load("re._no_such_parser") is None


# --- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "check"),
    [
        ({"type": "string", "pattern": r"^(?P<w>ab|cd)-(?P=w)$"}, r"^(ab-ab|cd-cd)$"),
        ({"type": "string", "pattern": r"^[^a-z\s]{3}x$"}, r"^[^a-z\s]{3}x$"),
        ({"type": "string", "pattern": r"^(?=.*\d)[a-z\d]{6}$"}, r"^(?=.*\d)[a-z\d]{6}$"),
        ({"type": "string", "pattern": r"^[a-z]+$", "minLength": 12}, r"^[a-z]{12,}$"),
        ({"type": "string", "pattern": r"^.{2,4}$"}, r"^.{2,4}$"),
    ],
)
def test_pattern_edge_cases(schema: Schema, check: str) -> None:
    for seed in range(20):
        value = instance_for_schema(schema, str(seed))
        assert re.search(check, value), value
        assert_valid(schema, value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 3},
        {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1},
        {"type": "integer", "minimum": 1, "maximum": 2, "multipleOf": 5},
        {"type": "string", "minLength": 5, "maxLength": 2},
        {"type": "array", "minItems": 3, "maxItems": 1},
        {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 3},
        {"allOf": [{"type": "string"}, {"type": "integer"}]},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]},
        {"type": "object", "required": ["a"], "additionalProperties": False},
        {"enum": []},
        {"type": "string", "enum": [1, 2]},
        {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {
            "$defs": {
                "n": {
                    "type": "object",
                    "properties": {"n": {"$ref": "#/$defs/n"}},
                    "required": ["n"],
                }
            },
            "$ref": "#/$defs/n",
        },
    ],
)
def test_impossible_schemas_raise(schema: Schema) -> None:
    with pytest.raises(ValueError):
        instance_for_schema(schema, "seed")


def test_all_of_merges_object_schemas() -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}},
            {"properties": {"a": {"maximum": 4}, "b": {"const": "x"}}, "required": ["a", "b"]},
        ]
    }
    for seed in range(10):
        instance = instance_for_schema(schema, str(seed))
        assert_valid(schema, instance)
        assert instance["a"] in (3, 4) and instance["b"] == "x"


def test_one_of_picks_a_single_branch() -> None:
    schema = {"oneOf": [{"type": "integer"}, {"type": "number", "multipleOf": 0.5}]}
    for seed in range(20):
        assert_valid(schema, instance_for_schema(schema, str(seed)))


def test_unbounded_strings_are_short_words() -> None:
    value = instance_for_schema({"type": "string"}, "words")
    assert re.fullmatch(r"[a-z]+ [a-z]+", value)


def test_definitions_and_prefix_items() -> None:
    schema = {
        "definitions": {
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "string"}, {"type": "integer"}],
                "items": False,
                "minItems": 2,
            }
        },
        "type": "object",
        "properties": {"p": {"$ref": "#/definitions/pair"}},
        "required": ["p"],
    }
    instance = instance_for_schema(schema, "x")
    assert_valid(schema, instance)
    assert isinstance(instance["p"][0], str) and isinstance(instance["p"][1], int)
