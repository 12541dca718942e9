from __future__ import annotations

import base64
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from openai.lib._pydantic import to_strict_json_schema

from batchpilot.data.rows import Row
from batchpilot.errors import ConfigError, UserInputError
from batchpilot.render import MissingField, RequestRenderer
from batchpilot.response_schema import load_response_model, load_response_schema
from batchpilot.spec import JobSpec, ResponseSpec, job_from_dict

STRICT_SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["good", "bad"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["label", "tags"],
    "additionalProperties": False,
}


def make_job(tmp_path: Path, **fields: Any) -> JobSpec:
    data: dict[str, Any] = {
        "name": "test",
        "model": "gpt-4o-mini",
        "input": {"path": "rows.jsonl"},
        "prompt": {"user": "{{ text }}"},
    }
    data.update(fields)
    return job_from_dict(data, base_dir=tmp_path, environ={})


def row(data: dict[str, Any], index: int = 0, id: str = "r1") -> Row:
    return Row(index, id, data, f"rows.jsonl:{index + 1}")


def tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# --- chat ---------------------------------------------------------------------------------


def test_chat_system_and_user(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        prompt={"system": "You label reviews.\n", "user": "Review {{ row.id }}:\n{{ text }}\n\n"},
    )
    body = RequestRenderer(job).render(row({"text": "Great film  "}))
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You label reviews."},
            {"role": "user", "content": "Review r1:\nGreat film"},
        ],
    }


def test_row_info_stays_reachable_when_data_has_a_row_field(tmp_path: Path) -> None:
    job = make_job(tmp_path, prompt={"user": "{{ row }} / {{ _row.id }} / {{ _row.index }}"})
    body = RequestRenderer(job).render(row({"row": "seven"}, index=6, id="x"))
    assert body["messages"][0]["content"] == "seven / x / 6"


def test_chat_messages_with_parts(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        prompt={
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Example: {{ example }}"},
                {"role": "assistant", "content": "ok"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": " Describe {{ name }} "},
                        {"type": "image", "image": "{{ url }}", "detail": "low"},
                    ],
                },
            ]
        },
    )
    data = {"example": "a cat", "name": "this", "url": "https://example.com/a.png"}
    body = RequestRenderer(job).render(row(data))
    assert body["messages"] == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Example: a cat"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/a.png", "detail": "low"},
                },
            ],
        },
    ]


def test_empty_rendered_prompt_is_kept(tmp_path: Path) -> None:
    job = make_job(tmp_path, prompt={"system": "{{ sys }}", "user": "{{ text }}"})
    body = RequestRenderer(job).render(row({"sys": "  ", "text": "hi"}))
    assert body["messages"][0] == {"role": "system", "content": ""}


# --- images -------------------------------------------------------------------------------


def test_images_from_url_data_url_and_local_file(tmp_path: Path) -> None:
    png = tiny_png()
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "one.png").write_bytes(png)
    job = make_job(
        tmp_path,
        prompt={
            "user": "What is shown?",
            "images": [
                {"field": "web", "detail": "high"},
                {"field": "inline"},
                {"field": "local", "detail": "low"},
            ],
        },
    )
    data_url = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
    data = {"web": "https://example.com/x.jpg", "inline": data_url, "local": "pics/one.png"}
    body = RequestRenderer(job).render(row(data))
    expected_local = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is shown?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/x.jpg", "detail": "high"},
                },
                {"type": "image_url", "image_url": {"url": data_url, "detail": "auto"}},
                {"type": "image_url", "image_url": {"url": expected_local, "detail": "low"}},
            ],
        }
    ]


def test_local_images_resolve_against_an_input_directory(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "page.jpg").write_bytes(b"\xff\xd8\xff")
    job = make_job(
        tmp_path,
        input={"path": "scans", "format": "dir"},
        prompt={"user": "Read it.", "images": [{"field": "file"}]},
    )
    body = RequestRenderer(job).render(row({"file": "page.jpg"}))
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    assert url == "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff").decode("ascii")


def test_list_valued_image_field_gives_several_parts(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        prompt={
            "messages": [
                {"role": "system", "content": "Compare."},
                {"role": "user", "content": "{{ question }}"},
            ],
            "images": [{"field": "photos", "detail": "low"}],
        },
    )
    urls = ["https://example.com/1.png", "https://example.com/2.png"]
    body = RequestRenderer(job).render(row({"question": "Same?", "photos": urls}))
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Same?"},
        {"type": "image_url", "image_url": {"url": urls[0], "detail": "low"}},
        {"type": "image_url", "image_url": {"url": urls[1], "detail": "low"}},
    ]


def test_missing_image_file_names_source_id_and_path(tmp_path: Path) -> None:
    job = make_job(tmp_path, prompt={"user": "x", "images": [{"field": "img"}]})
    with pytest.raises(UserInputError) as info:
        RequestRenderer(job).render(row({"img": "nope.png"}, id="row-9"))
    message = str(info.value)
    assert "rows.jsonl:1" in message
    assert "row-9" in message
    assert str(tmp_path / "nope.png") in message


def test_unsupported_image_type(tmp_path: Path) -> None:
    (tmp_path / "a.bmp").write_bytes(b"BM")
    job = make_job(tmp_path, prompt={"user": "x", "images": [{"field": "img"}]})
    with pytest.raises(UserInputError, match=r"rows\.jsonl:1: .*a\.bmp is not a supported"):
        RequestRenderer(job).render(row({"img": "a.bmp"}))


def test_missing_image_field_is_a_missing_field(tmp_path: Path) -> None:
    job = make_job(tmp_path, prompt={"user": "x", "images": [{"field": "img"}]})
    with pytest.raises(MissingField) as info:
        RequestRenderer(job).render(row({}))
    assert info.value.field == "img"


# --- missing fields and the sandbox -------------------------------------------------------


def test_missing_field(tmp_path: Path) -> None:
    job = make_job(tmp_path, prompt={"user": "{{ title }}: {{ body }}"})
    with pytest.raises(MissingField) as info:
        RequestRenderer(job).render(row({"title": "t"}, index=4, id="doc-5"))
    error = info.value
    assert (error.source, error.row_id, error.field) == ("rows.jsonl:5", "doc-5", "body")
    assert str(error) == (
        "rows.jsonl:5 (id doc-5): the template uses 'body', which this row does not have; "
        "add it or set limits.on_missing_field: skip"
    )
    assert isinstance(error, UserInputError)


@pytest.mark.parametrize("template", ["{{ meta.author }}", "{{ meta['author'] }}"])
def test_nested_missing_attribute_names_the_attribute(tmp_path: Path, template: str) -> None:
    job = make_job(tmp_path, prompt={"user": template})
    with pytest.raises(MissingField) as info:
        RequestRenderer(job).render(row({"meta": {"year": 2020}}))
    assert info.value.field == "author"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ text.__class__.__subclasses__() }}",
        "{{ items.append(1) }}",
    ],
)
def test_sandbox_escapes_are_refused(tmp_path: Path, template: str) -> None:
    job = make_job(tmp_path, prompt={"user": template})
    with pytest.raises(UserInputError, match=r"^prompt\.user uses a forbidden attribute") as info:
        RequestRenderer(job).render(row({"text": "a", "items": []}))
    assert not isinstance(info.value, MissingField)


def test_template_runtime_error_names_row_and_template(tmp_path: Path) -> None:
    job = make_job(tmp_path, prompt={"user": "{{ text + 1 }}"})
    with pytest.raises(UserInputError, match=r"rows\.jsonl:1 \(id r1\): prompt\.user failed"):
        RequestRenderer(job).render(row({"text": "a"}))


@pytest.mark.parametrize(
    ("prompt", "name", "line"),
    [
        ({"user": "Hello\n{{ text }"}, "prompt.user", 2),
        ({"system": "{% if %}", "user": "x"}, "prompt.system", 1),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "{{ a|nope }}"}]}]},
            "prompt.messages[0].content[0].text",
            1,
        ),
    ],
)
def test_template_syntax_error(
    tmp_path: Path, prompt: dict[str, Any], name: str, line: int
) -> None:
    job = make_job(tmp_path, prompt=prompt)
    with pytest.raises(ConfigError) as info:
        RequestRenderer(job)
    assert str(info.value).startswith(f"{name}: template syntax error at line {line}: ")


# --- other endpoints ----------------------------------------------------------------------


def test_embeddings_body(tmp_path: Path) -> None:
    job = make_job(
        tmp_path,
        model="text-embedding-3-small",
        endpoint="/v1/embeddings",
        prompt={"input": "{{ title }}\n{{ text }}"},
        params={"dimensions": 256},
    )
    body = RequestRenderer(job).render(row({"title": "T", "text": "body"}))
    assert body == {"model": "text-embedding-3-small", "input": "T\nbody", "dimensions": 256}


def test_responses_body(tmp_path: Path) -> None:
    (tmp_path / "label.json").write_text(json.dumps(STRICT_SCHEMA))
    job = make_job(
        tmp_path,
        model="gpt-4.1-mini",
        endpoint="/v1/responses",
        prompt={
            "system": "Label {{ kind }}.",
            "user": "{{ text }}",
            "images": [{"field": "img", "detail": "high"}],
        },
        params={"max_output_tokens": 50, "text": {"verbosity": "low"}},
        response={"schema": "label.json"},
    )
    renderer = RequestRenderer(job)
    data = {"kind": "photos", "text": "this one", "img": "https://example.com/p.png"}
    body = renderer.render(row(data))
    assert body == {
        "model": "gpt-4.1-mini",
        "instructions": "Label photos.",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "this one"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/p.png",
                        "detail": "high",
                    },
                ],
            }
        ],
        "max_output_tokens": 50,
        "text": {
            "verbosity": "low",
            "format": {
                "type": "json_schema",
                "name": "label",
                "schema": STRICT_SCHEMA,
                "strict": True,
            },
        },
    }
    assert renderer.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "label", "schema": STRICT_SCHEMA, "strict": True},
    }


# --- response schemas ---------------------------------------------------------------------


def test_chat_response_format_from_json_file(tmp_path: Path) -> None:
    (tmp_path / "my label.v2.json").write_text(json.dumps(STRICT_SCHEMA))
    job = make_job(tmp_path, response={"schema": "my label.v2.json"}, params={"temperature": 0})
    renderer = RequestRenderer(job)
    body = renderer.render(row({"text": "x"}))
    assert list(body) == ["model", "messages", "temperature", "response_format"]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "my_label_v2", "schema": STRICT_SCHEMA, "strict": True},
    }
    assert body["response_format"] == renderer.response_format


def test_response_schema_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "schema.yaml").write_text(
        "type: object\n"
        "properties:\n"
        "  label: {type: string}\n"
        "required: [label]\n"
        "additionalProperties: false\n"
    )
    spec = ResponseSpec(schema_="schema.yaml", name="labels")
    name, schema = load_response_schema(spec, tmp_path)
    assert name == "labels"
    assert schema["properties"] == {"label": {"type": "string"}}


def test_strict_violations_are_reported_with_pointers(tmp_path: Path) -> None:
    loose = {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "people": {
                "type": "array",
                "items": {"type": "object", "properties": {"a/b": {"type": "string"}}},
            },
        },
        "required": ["label"],
    }
    (tmp_path / "loose.json").write_text(json.dumps(loose))
    with pytest.raises(ConfigError) as info:
        load_response_schema(ResponseSpec(schema_="loose.json"), tmp_path)
    message = str(info.value)
    assert str(tmp_path / "loose.json") in message
    assert '#: add "additionalProperties": false' in message
    assert "#: \"required\" must list every property; add 'people'" in message
    assert '#/properties/people/items: add "additionalProperties": false' in message
    assert "#/properties/people/items: \"required\" must list every property; add 'a/b'" in message
    assert "response.strict: false" in message

    name, schema = load_response_schema(ResponseSpec(schema_="loose.json", strict=False), tmp_path)
    assert (name, schema) == ("loose", loose)


def test_strict_root_must_be_an_object(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps({"type": "array", "items": {"type": "string"}}))
    with pytest.raises(ConfigError, match=r'#: the root must be \{"type": "object"\}'):
        load_response_schema(ResponseSpec(schema_="list.json"), tmp_path)


def test_invalid_json_schema_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{\n  "type": "object",\n  oops\n}')
    with pytest.raises(ConfigError, match=r"bad\.json:3:3: not valid JSON"):
        load_response_schema(ResponseSpec(schema_="bad.json"), tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        load_response_schema(ResponseSpec(schema_="absent.json"), tmp_path)


def test_invalid_response_name(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(STRICT_SCHEMA))
    with pytest.raises(ConfigError, match=r"response\.name"):
        load_response_schema(ResponseSpec(schema_="s.json", name="has space"), tmp_path)


MODELS_SOURCE = """
from pydantic import BaseModel, Field


class Person(BaseModel):
    name: str
    age: int | None = None


class Extraction(BaseModel):
    people: list[Person]
    summary: str = Field(description="One sentence.")


NOT_A_MODEL = 3
"""


def test_pydantic_model_schema_matches_the_sdk(tmp_path: Path) -> None:
    module = "render_test_models_a"
    (tmp_path / f"{module}.py").write_text(MODELS_SOURCE)
    path_before = list(sys.path)
    try:
        spec = ResponseSpec(schema_=f"{module}:Extraction")
        name, schema = load_response_schema(spec, tmp_path)
        model = load_response_model(spec, tmp_path)
        assert model is not None
        assert sys.path == path_before
        assert name == "Extraction"
        assert schema == to_strict_json_schema(model)
    finally:
        sys.modules.pop(module, None)


def test_pydantic_model_errors(tmp_path: Path) -> None:
    module = "render_test_models_b"
    (tmp_path / f"{module}.py").write_text(MODELS_SOURCE)
    path_before = list(sys.path)
    try:
        with pytest.raises(ConfigError, match="not a pydantic model"):
            load_response_schema(ResponseSpec(schema_=f"{module}:NOT_A_MODEL"), tmp_path)
        with pytest.raises(ConfigError, match="has no 'Missing'"):
            load_response_schema(ResponseSpec(schema_=f"{module}:Missing"), tmp_path)
        with pytest.raises(ConfigError, match=r"cannot import 'render_test_absent'.*next to"):
            load_response_schema(ResponseSpec(schema_="render_test_absent:Model"), tmp_path)
        assert sys.path == path_before
    finally:
        sys.modules.pop(module, None)


def test_response_format_in_params_and_response_conflict(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(STRICT_SCHEMA))
    job = make_job(
        tmp_path, response={"schema": "s.json"}, params={"response_format": {"type": "text"}}
    )
    with pytest.raises(ConfigError, match="keep one"):
        RequestRenderer(job)


# --- determinism --------------------------------------------------------------------------


def test_params_order_and_determinism(tmp_path: Path) -> None:
    params = {"temperature": 0.2, "max_completion_tokens": 30, "seed": 7, "top_p": 0.9}
    job = make_job(tmp_path, prompt={"system": "S", "user": "{{ text }}"}, params=params)
    renderer = RequestRenderer(job)
    first = renderer.render(row({"text": "same"}))
    second = RequestRenderer(job).render(row({"text": "same"}))
    assert first == second
    assert json.dumps(first) == json.dumps(second)
    assert list(first) == [
        "model",
        "messages",
        "temperature",
        "max_completion_tokens",
        "seed",
        "top_p",
    ]
    assert renderer.response_format is None


@pytest.mark.parametrize(
    "value", ["plain", 42, 3.5, None, True, ["a", 1], {"k": "v"}, "ünï 🎬", "  padded  "]
)
def test_plain_substitutions_render_exactly_as_jinja_does(tmp_path: Path, value: Any) -> None:
    import jinja2.sandbox

    from batchpilot.render import _Text

    source = "Title: {{ title }}\n\n{{ plot }} (end)\n"
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False
    )
    fast = _Text(environment, "prompt.user", source)
    assert fast.pieces is not None
    row = Row(0, "r", {"title": value, "plot": value}, "t.jsonl:1")
    expected = environment.from_string(source).render(title=value, plot=value).strip()
    assert fast.render({"title": value, "plot": value}, row) == expected


def test_templates_with_more_than_names_use_jinja(tmp_path: Path) -> None:
    import jinja2.sandbox

    from batchpilot.render import _Text

    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    for source in ("{{ title | upper }}", "{{ row.id }}", "{% if a %}x{% endif %}"):
        assert _Text(environment, "prompt.user", source).pieces is None
