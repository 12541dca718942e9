"""Input rows kept in frames: the JSON of rows planned together, in consecutive positions,
compressed as one zstd frame (one line a row, an empty line for a row whose data is not kept).

Rows of one input share their keys and much of their text, so a frame of a thousand takes a
fraction of what the rows packed one by one take, and reading every row in order (an export)
unpacks a frame a thousand rows instead of each row. A row's `data_json` in `rows` is then
NULL; a value there (rows planned before frames, a row planned alone or larger than a frame,
JSON holding a line break) is the row's. A frame is written once, with its rows, and never
changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from batchpilot.store.database import Connection
from batchpilot.store.packing import pack_whole, packed_with_row, unpack, unpack_body, unpack_whole
from batchpilot.store.records import NewRow

__all__ = ["RowFrames", "in_order", "register", "write"]

_LINE = b"\n"
_KEPT_FRAMES = 4
FRAME_BYTES = 1 << 20
"""The most bytes of JSON a frame holds (rows with large values, such as images, make frames
of fewer rows; a row larger than this alone stays in `rows`)."""


def write(db: Connection, run_id: str, rows: Sequence[NewRow]) -> set[int]:
    """Frame the data of `rows` (planned now, none planned before) that are in consecutive
    positions; the positions of the rows framed, whose data is then not kept in `rows`."""
    lines: dict[int, bytes] = {}
    seen: set[int] = set()
    for row in rows:
        if row.index in seen:
            continue  # the first of a position is the one planned
        seen.add(row.index)
        line = b"" if row.data_json is None else row.data_json.encode()
        if _LINE not in line:
            lines[row.index] = line
    frames: list[tuple[str, int, int, bytes]] = []
    framed: set[int] = set()

    def close(first: int, last: int) -> None:
        if first == last:
            return  # a row alone gains nothing from a frame: kept in `rows`
        data = _LINE.join([lines[index] for index in range(first, last + 1)])
        frames.append((run_id, first, last, pack_whole(data)))
        framed.update(range(first, last + 1))

    first, previous, size = -1, -2, 0
    for index in sorted(lines):
        length = len(lines[index]) + 1
        if index != previous + 1 or size + length > FRAME_BYTES:
            if previous >= 0:
                close(first, previous)
            first, size = index, 0
        size += length
        previous = index
    if previous >= 0:
        close(first, previous)
    db.executemany(
        "INSERT INTO row_frames(run_id, first_row, last_row, data) VALUES (?, ?, ?, ?)", frames
    )
    return framed


def _line(value: bytes) -> str | None:
    return value.decode() if value else None


class RowFrames:
    """Rows' JSON read from frames through one connection, the last few frames read kept."""

    def __init__(self, db: Connection) -> None:
        self._db = db
        self._kept: list[tuple[str, int, int, list[bytes]]] = []

    def data(self, run_id: str, row_index: int) -> str | None:
        """The JSON of a row whose data is not in `rows` (None: not kept)."""
        for kept_run, first, last, lines in self._kept:
            if first <= row_index <= last and kept_run == run_id:
                return _line(lines[row_index - first])
        found = self._db.execute(
            "SELECT first_row, last_row, data FROM row_frames WHERE run_id = ? AND first_row <= ? "
            "ORDER BY first_row DESC LIMIT 1",
            (run_id, row_index),
        ).fetchone()
        if found is None or found[1] < row_index:
            return None
        first, last = int(found[0]), int(found[1])
        lines = unpack_whole(found[2]).split(_LINE)
        self._kept.insert(0, (run_id, first, last, lines))
        del self._kept[_KEPT_FRAMES:]
        return _line(lines[row_index - first])

    def row(self, run_id: str, row_index: int, stored: str | bytes | None) -> str | None:
        """A row's JSON: `stored`, its `data_json` in `rows`, unpacked, or from its frame."""
        if stored is not None:
            return unpack(stored)
        return self.data(run_id, row_index)

    def forget(self) -> None:
        """Drop the frames kept (a transaction that may have read its own was rolled back)."""
        self._kept.clear()


def in_order(db: Connection, run_id: str) -> Iterator[tuple[int, int, list[str]]]:
    """A run's frames in order of their rows: (first row, last row, each row's JSON, empty
    where its data is not kept), each unpacked as it is reached; an export reads its rows'
    JSON from them in increasing positions."""
    cursor = db.cursor()
    cursor.row_factory = None
    cursor.execute(
        "SELECT first_row, last_row, data FROM row_frames WHERE run_id = ? ORDER BY first_row",
        (run_id,),
    )
    for first, last, data in cursor:
        yield first, last, unpack_whole(data).decode().split("\n")
    yield _NONE_AFTER, _NONE_AFTER, []


_NONE_AFTER = 1 << 62  # past every row: after the last frame


def register(db: Connection) -> RowFrames:
    """SQL functions that read rows kept in frames, on this connection: `row_data(run_id,
    row_index, data_json)`, the row's JSON, and `request_body(body, run_id, first_row,
    data_json)`, a request's body unpacked (`data_json` is its first row's in `rows`); the
    frames they read, to forget on a rollback."""
    frames = RowFrames(db)

    def body(value: bytes | str, run_id: str, first_row: int, stored: str | bytes | None) -> bytes:
        row: str | bytes | None = stored
        if stored is None and packed_with_row(value):
            row = frames.data(run_id, first_row)
        return unpack_body(value, row)

    db.create_function("row_data", 3, frames.row)
    db.create_function("request_body", 4, body)
    return frames
