"""A batch's results as our result lines, for providers whose results arrive as a stream of
answers and errors (not as files of ours): given to a sink, or written to an output and an
error file, each whole or not at all."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from batchpilot.providers.base import Sink

__all__ = ["deliver_results"]


def deliver_results(
    lines: Iterable[tuple[bool, dict[str, Any] | bytes]], into: Sink, name: str, completed: int
) -> list[Path]:
    """Give `lines` (each: whether it is an answer, and the line, or the bytes of a line that
    could not be read, passed on as they came) to the sink `into`, or write them to
    `NAME.output.jsonl` and `NAME.errors.jsonl` in the directory `into`, the answers last, so
    that a complete output file means complete results; files written before (the output, or
    the errors of a batch that `completed` nothing) are kept as they are."""
    if not isinstance(into, Path):
        for _, line in lines:
            into(_text(line))
        return []
    output, errors = into / f"{name}.output.jsonl", into / f"{name}.errors.jsonl"
    if output.is_file() or (errors.is_file() and completed == 0):
        return [p for p in (output, errors) if p.is_file()]
    parts = {True: output.with_suffix(".jsonl.part"), False: errors.with_suffix(".jsonl.part")}
    counts = {True: 0, False: 0}
    try:
        with parts[True].open("wb") as good, parts[False].open("wb") as bad:
            for answer, line in lines:
                (good if answer else bad).write(_text(line) + b"\n")
                counts[answer] += 1
            for handle in (good, bad):
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        for part in parts.values():
            part.unlink(missing_ok=True)
        raise
    for answer, target in ((False, errors), (True, output)):
        if counts[answer]:
            parts[answer].replace(target)
        else:
            parts[answer].unlink(missing_ok=True)
    return [p for p in (output, errors) if p.is_file()]


def _text(line: dict[str, Any] | bytes) -> bytes:
    return line if isinstance(line, bytes) else json.dumps(line).encode()
