"""How the SQLite store keeps large text: input rows, request bodies and answers compressed.

A request's body is rendered from its row, so it is compressed with the row's JSON as the
dictionary: what it shares with the row (the row's text, mostly) costs a few bytes, and the input
is held once. That is raw deflate (zlib) with the row as its preset dictionary and the body's
length in front: a deflate stream is set up in a few microseconds, where a zstd context loaded
with a dictionary of its own takes about thirty, for every body written and read. Rows and
answers are zstd, answers with a built-in dictionary of what a chat completion says around its
content. A value too small to gain is kept as it is.

Each packed value is a BLOB whose first byte says how it was packed; JSON never starts with one
of these bytes, so values written before packing (text, or a body's bytes) read as they are.
The store reads them back in SQL through the functions `register` adds to a connection.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable

import zstandard

from batchpilot.store.database import Connection

__all__ = [
    "body_size",
    "pack",
    "pack_answer",
    "pack_body",
    "pack_whole",
    "packed_with_row",
    "register",
    "text_unpacker",
    "unpack",
    "unpack_body",
    "unpack_whole",
]

PLAIN = 1  # zstd, no dictionary
WITH_ROW = 2  # zstd, the request's row as the dictionary (written by earlier versions)
ANSWER = 3  # zstd, the built-in answer dictionary (version 1)
ROW_DEFLATE = 4  # the body's length (4 bytes, little-endian), raw deflate with the row preset
_SMALLEST = 96  # bytes: below this, compression gains less than it costs
_LEVEL = 1
_LENGTH = 4  # bytes of a ROW_DEFLATE body's length

# What an OpenAI-style chat completion holds around its content; the dictionary's bytes may
# never change once written (a new one takes a new tag).
_ANSWER_DICTIONARY = (
    b'{"id":"chatcmpl-","object":"chat.completion","created":17,"model":"gpt-4o-mini-2024-07-18",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"{\\"","refusal":null,'
    b'"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":'
    b',"completion_tokens":,"total_tokens":,"prompt_tokens_details":{"cached_tokens":0,'
    b'"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default",'
    b'"system_fingerprint":"fp_"}'
    b'{"id":"chatcmpl-","object":"chat.completion","created":17,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"'
)


def _dictionary(content: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


class _Contexts(threading.local):
    """Compression and decompression contexts, reused: making one costs more than a small
    value's whole compression. Not thread-safe, so each thread has its own."""

    def __init__(self) -> None:
        answers = _dictionary(_ANSWER_DICTIONARY)
        answers.precompute_compress(level=_LEVEL)
        self.compress = zstandard.ZstdCompressor(level=_LEVEL)
        self.decompress = zstandard.ZstdDecompressor()
        self.compress_answer = zstandard.ZstdCompressor(level=_LEVEL, dict_data=answers)
        self.decompress_answer = zstandard.ZstdDecompressor(dict_data=answers)


_contexts = _Contexts()


def _packed(tag: int, data: bytes, compressor: zstandard.ZstdCompressor) -> bytes | None:
    if len(data) < _SMALLEST:
        return None
    packed = bytes((tag,)) + compressor.compress(data)
    return packed if len(packed) < len(data) else None


def pack(text: str | None) -> str | bytes | None:
    """A row's JSON (or any text) as the store keeps it."""
    if text is None:
        return None
    return _packed(PLAIN, text.encode(), _contexts.compress) or text


def pack_answer(text: str | bytes) -> str | bytes:
    """An answer's JSON (text, or its UTF-8 bytes) as the store keeps it."""
    data = text.encode() if isinstance(text, str) else text
    packed = _packed(ANSWER, data, _contexts.compress_answer)
    if packed is not None:
        return packed
    return text if isinstance(text, str) else text.decode()


def pack_body(body: bytes, row: str | None) -> bytes:
    """A request's body as the store keeps it, `row` the JSON of the row it was rendered from
    exactly as that row is stored (unpacked), or None."""
    if len(body) < _SMALLEST:
        return body
    if row is None or len(row) < _SMALLEST:
        return _packed(PLAIN, body, _contexts.compress) or body
    preset = row.encode()
    # the smallest window that holds the row and the body: less to set up
    window = min(15, max(9, (len(preset) + len(body)).bit_length()))
    deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, -window, 5, zdict=preset)
    head = bytes((ROW_DEFLATE,)) + len(body).to_bytes(_LENGTH, "little")
    packed = head + deflate.compress(body) + deflate.flush()
    return packed if len(packed) < len(body) else body


def pack_whole(data: bytes) -> bytes:
    """Bytes always kept compressed (a batch's answers together), as one zstd frame."""
    return _contexts.compress.compress(data)


def unpack_whole(value: bytes) -> bytes:
    """The bytes `pack_whole` packed."""
    return _contexts.decompress.decompress(value)


def unpack(value: str | bytes | None) -> str | None:
    """The text a value packed by `pack` or `pack_answer` holds."""
    if value is None or isinstance(value, str):
        return value
    if not value:
        return ""
    tag = value[0]
    if tag == PLAIN:
        return _contexts.decompress.decompress(value[1:]).decode()
    if tag == ANSWER:
        return _contexts.decompress_answer.decompress(value[1:]).decode()
    return value.decode()


def text_unpacker() -> Callable[[bytes], str]:
    """`unpack` for packed values (bytes) read in a loop on this thread: this thread's
    contexts looked up once."""
    contexts = _contexts
    plain, answer = contexts.decompress.decompress, contexts.decompress_answer.decompress

    def unpack_text(value: bytes) -> str:
        tag = value[0] if value else 0
        if tag == PLAIN:
            return plain(value[1:]).decode()
        if tag == ANSWER:
            return answer(value[1:]).decode()
        return value.decode()

    return unpack_text


def unpack_body(value: bytes | str, row: str | bytes | None) -> bytes:
    """The body a value packed by `pack_body` holds; `row` is the row's stored (packed) JSON."""
    if isinstance(value, str):
        return value.encode()
    if value and value[0] in (ROW_DEFLATE, WITH_ROW):
        text = unpack(row)
        if not text:
            raise ValueError("a request body packed with its row, whose data is gone")
        if value[0] == WITH_ROW:
            dictionary = _dictionary(text.encode())
            return zstandard.ZstdDecompressor(dict_data=dictionary).decompress(value[1:])
        inflate = zlib.decompressobj(-15, zdict=text.encode())
        return inflate.decompress(memoryview(value)[1 + _LENGTH :]) + inflate.flush()
    if value and value[0] == PLAIN:
        return _contexts.decompress.decompress(value[1:])
    return bytes(value)


def packed_with_row(value: bytes | str) -> bool:
    """Whether a value packed by `pack_body` takes its row to unpack."""
    return isinstance(value, bytes) and bool(value) and value[0] in (ROW_DEFLATE, WITH_ROW)


def body_size(value: bytes | str) -> int | None:
    """The length of the body a value packed by `pack_body` holds, read from its head (or its
    zstd frame's header) without unpacking it; None where the frame does not say."""
    if isinstance(value, str):
        return len(value.encode())
    if value and value[0] == ROW_DEFLATE:
        return int.from_bytes(value[1 : 1 + _LENGTH], "little")
    if value and value[0] in (WITH_ROW, PLAIN):
        size = zstandard.frame_content_size(memoryview(value)[1:])
        return size if size >= 0 else None
    return len(value)


def register(db: Connection) -> None:
    """The SQL functions that read (`unpack`, `unpack_body`, `body_size`) and write (`pack`,
    `pack_answer`, `pack_body`) packed values, on this connection."""
    db.create_function("unpack", 1, unpack, deterministic=True)
    db.create_function("unpack_body", 2, unpack_body, deterministic=True)
    db.create_function("body_size", 1, body_size, deterministic=True)
    db.create_function("pack", 1, pack, deterministic=True)
    db.create_function("pack_answer", 1, pack_answer, deterministic=True)
    db.create_function("pack_body", 2, _pack_stored_body, deterministic=True)


def _pack_stored_body(body: bytes | str, row: str | bytes | None) -> bytes:
    """`pack_body` for a body already in the store, `row` its row's stored JSON (packed or not)."""
    return pack_body(unpack_body(body, None), unpack(row))
