"""Writing an export's lines: whole, in order, synced as they are written and at the end."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from batchpilot.export import files
from batchpilot.export.files import write_lines


def lines(count: int) -> list[bytes]:
    return [b'{"row": %d, "text": "%s"}\n' % (i, b"x" * (i % 97)) for i in range(count)]


def test_every_line_is_written_in_order_and_synced_in_the_background_as_the_file_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "SYNC_EVERY", 4096)  # a sync started every few thousand bytes
    synced: list[int] = []
    real = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(threading.get_ident())
        real(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    written = lines(2_500)
    target = tmp_path / "out.jsonl"
    with target.open("wb") as stream:
        assert write_lines(iter(written), stream) == 2_500
    assert target.read_bytes() == b"".join(written)
    assert synced[-1] == threading.get_ident(), "the last sync is the writer's own"
    assert any(ident != threading.get_ident() for ident in synced), "none in the background"


def test_a_pipe_is_written_without_a_sync_and_an_empty_export_is_an_empty_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "SYNC_EVERY", 1)
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    reading, writing = os.pipe()
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_drain(reading)))
    reader.start()
    with os.fdopen(writing, "wb") as stream:
        assert write_lines(lines(1_200), stream) == 1_200
    reader.join(timeout=30)
    assert bytes(received) == b"".join(lines(1_200))
    assert errors == []
    empty = tmp_path / "empty.jsonl"
    with empty.open("wb") as stream:
        assert write_lines([], stream) == 0
    assert empty.read_bytes() == b""


def _drain(descriptor: int) -> bytes:
    with os.fdopen(descriptor, "rb") as stream:
        return stream.read()
