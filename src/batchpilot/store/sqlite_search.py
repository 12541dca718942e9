"""A text search of a run's rows (the answer browser's): the rows whose input, or whose answer
kept in a batch's frames, holds the text, found a frame at a time.

The search means what `LIKE '%text%'` means in SQLite: the text itself, ASCII letters in any
case, every other character as it is. That is a search of UTF-8 bytes lowered as `bytes.lower`
lowers them (ASCII alone), which a frame of rows or of a batch's answers allows at once: the
frame is lowered and searched whole, and the lines that hold the text noted, instead of each
row's and answer's text unpacked and handed to SQL on its own. What is kept one by one (rows
planned before frames, answers in `results`) is searched by SQL as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from batchpilot.store.database import Connection
from batchpilot.store.packing import unpack_whole
from batchpilot.store.sqlite_batch_answers import FRAME, Recorded

__all__ = ["FramedSearches", "framed_matches"]

_LINE = b"\n"


def lines_holding(blob: bytes, text: bytes) -> list[int]:
    """The numbers of the lines of `blob` that hold `text`, in order."""
    found: list[int] = []
    if not text or _LINE in text:
        return found  # no line holds a line break
    at = blob.find(text)
    line, counted = 0, 0
    while at >= 0:
        line += blob.count(_LINE, counted, at)
        found.append(line)
        end = blob.find(_LINE, at)
        if end < 0:
            break
        line += 1
        counted = end + 1
        at = blob.find(text, counted)
    return found


MOST_MATCHES = 20_000
"""The most rows and answers a search finds in frames before it leaves a text this common to be
searched row by row (which stops at the page and the rows past it that it counts)."""


def framed_matches(db: Connection, run_id: str, text: str) -> tuple[list[int], list[str]] | None:
    """The positions of the rows kept in frames whose input holds `text`, and the answers kept
    in batches' frames that hold it, each as `"{batch id} {request id}"`; None when there are
    more than `MOST_MATCHES`."""
    lowered = text.encode().lower()
    rows: list[int] = []
    for first, data in db.execute(
        "SELECT first_row, data FROM row_frames WHERE run_id = ? ORDER BY first_row", (run_id,)
    ):
        rows += [first + line for line in lines_holding(unpack_whole(data).lower(), lowered)]
        if len(rows) > MOST_MATCHES:
            return None
    answers: list[str] = []
    recorded = Recorded(db)
    numbers: dict[int, dict[int, str]] = {}
    for batch_id, frame, data in db.execute(
        "SELECT batch_id, frame, answers FROM batch_answer_frames WHERE run_id = ? "
        "ORDER BY batch_id, frame",
        (run_id,),
    ):
        found = lines_holding(unpack_whole(data).lower(), lowered)
        if not found:
            continue
        if batch_id not in numbers:
            kept = recorded.batch(run_id, batch_id)
            positions = {} if kept is None else kept.positions
            numbers[batch_id] = {number: request_id for request_id, number in positions.items()}
        ids = numbers[batch_id]
        for line in found:
            request_id = ids.get(frame * FRAME + line)
            if request_id is not None:
                answers.append(f"{batch_id} {request_id}")
        if len(rows) + len(answers) > MOST_MATCHES:
            return None
    return rows, answers


Matches = tuple[list[int], list[str]] | None


class FramedSearches:
    """The matches of the last few searches, kept while the run's frames stay as they were:
    frames are only ever added, so a run with as many frames of rows and of answers as when a
    search was made holds the same matches. The pages of one search (and the next keystroke's
    count) then read the run's frames once, not once a page."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._found: OrderedDict[tuple[str, str, int, int], Matches] = OrderedDict()
        self._lock = threading.Lock()  # shared by the threads of a store's connections

    def matches(self, db: Connection, run_id: str, text: str) -> Matches:
        """`framed_matches(db, run_id, text)`, kept."""
        rows, answers = db.execute(
            "SELECT (SELECT COUNT(*) FROM row_frames WHERE run_id = ?), "
            "(SELECT COUNT(*) FROM batch_answer_frames WHERE run_id = ?)",
            (run_id, run_id),
        ).fetchone()
        key = (run_id, text, int(rows), int(answers))
        with self._lock:
            if key in self._found:
                self._found.move_to_end(key)
                return self._found[key]
        found = framed_matches(db, run_id, text)
        if self._size > 0:
            with self._lock:
                self._found[key] = found
                while len(self._found) > self._size:
                    self._found.popitem(last=False)
        return found
