"""Request ids: a content hash of what is sent, so re-planning yields the same ids."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any

import orjson

__all__ = ["canonical_body", "request_id", "request_line"]

ID_PREFIX = "bp-"


def canonical_body(body: dict[str, Any]) -> bytes:
    """The body as compact UTF-8 JSON with sorted keys: equal bodies give equal bytes."""
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # keys that are not strings, integers past 64 bits
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_id(endpoint: str, canonical: bytes) -> str:
    """`bp-` and 32 hex digits of sha256 over the endpoint and the canonical body."""
    digest = hashlib.sha256(endpoint.encode() + b"\n" + canonical).hexdigest()
    return ID_PREFIX + digest[:32]


def request_line(custom_id: str, endpoint: str, canonical: bytes) -> bytes:
    """One line of an OpenAI batch input file, without the newline."""
    quoted = (
        b'"' + custom_id.encode() + b'"'
        if _PLAIN.fullmatch(custom_id)
        else json.dumps(custom_id).encode()
    )
    return b'{"custom_id":' + quoted + _url(endpoint) + canonical + b"}"


_PLAIN = re.compile(r"[A-Za-z0-9_.:/ -]*")
"""Ids that JSON writes as they are, between quotes (request ids are `bp-` and hex)."""


@functools.lru_cache(maxsize=16)
def _url(endpoint: str) -> bytes:
    return b',"method":"POST","url":' + json.dumps(endpoint).encode() + b',"body":'
