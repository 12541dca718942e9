"""A process that counts request bodies' tokens for the planner.

Run as `python -m batchpilot.count_worker`. It reads frames from its standard input, each a
4-byte little-endian length and a JSON array of `[endpoint, body]` pairs, counts each body as
`batchpilot.tokens.count_request` does, and writes one frame back per frame read: a JSON array
holding `[tokens, exact]` for each pair, or null where the count failed (the planner counts
that body again itself and meets the error where it would have). A frame it cannot parse is
answered with null. It ends when its input ends, so it never outlives the planner.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from typing import BinaryIO

import orjson

HEADER = struct.Struct("<I")


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's payload, or None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


def frame(payload: bytes) -> bytes:
    """`payload` with its length in front."""
    return HEADER.pack(len(payload)) + payload


def counts(payload: bytes) -> list[list[int | bool] | None] | None:
    """The count of each body in a frame, None for each that fails; None for a bad frame."""
    from batchpilot.tokens import count_request

    try:
        pairs = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    answers: list[list[int | bool] | None] = []
    for endpoint, body in pairs:
        try:
            counted = count_request(body, endpoint)
        except Exception:  # counted again by the planner, which reports it
            answers.append(None)
        else:
            answers.append([counted.tokens, counted.exact])
    return answers


def answer(payload: bytes) -> bytes:
    """The frame that answers the frame `payload`."""
    return frame(orjson.dumps(counts(payload)))


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    """Answer every frame of `source` on `sink` until `source` ends."""
    while (payload := read_frame(source)) is not None:
        sink.write(answer(payload))
        sink.flush()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(sys.stdin.buffer, sys.stdout.buffer)
