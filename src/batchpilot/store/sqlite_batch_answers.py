"""A batch's answers kept whole (SQLite).

The answers a batch brought on their first try (its other outcomes, failures and requests to
try again, are written one by one) are compressed together, a frame of `FRAME` answers at a
time, beside the ids of their requests and each one's tokens and cost: one row of
`batch_answers` and one of `batch_answer_frames` per frame, where a request answered on its own
has a row in `results` and one in `attempts`. Writing a 50,000-request batch is then a handful of
rows instead of 150,000, and the answers, which repeat each other around their content, compress
better together than one by one. Such requests have no row in `results` nor in `attempts`; the
store's reads find their answers here (`Recorded`, and the SQL functions that `register` adds),
as the attempt that answered: on the batch lane, succeeded.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import orjson

from batchpilot.store.database import Connection
from batchpilot.store.packing import pack_whole, unpack_whole
from batchpilot.store.records import OUTCOME_COST, OUTCOME_INPUT, OUTCOME_OUTPUT, Outcome

__all__ = ["FRAME", "KeptBatch", "Recorded", "RecordedAnswer", "register", "write"]

FRAME = 1000  # answers compressed together: one read of an answer unpacks its frame alone
_KEPT_BATCHES = 4
_KEPT_FRAMES = 8


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
    """A request's answer in a batch kept whole, with what it used and when it was recorded."""

    response_json: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    at_utc: str


def _native(values: array) -> bytes:  # type: ignore[type-arg]
    """An array's bytes, little-endian whatever the machine."""
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _array(typecode: str, data: bytes) -> array:  # type: ignore[type-arg]
    values = array(typecode, data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def write(
    db: Connection,
    run_id: str,
    batch_id: int,
    outcomes: Sequence[Outcome],
    ids: list[str],
    tries: Sequence[int],
    now: str,
) -> None:
    """Keep a batch's answers whole: `outcomes` are answers of its requests (each succeeded,
    with its response), `ids` their requests' ids, `tries` the try each came on."""
    # a request file's ids may hold anything; every outcome's fields are read in C
    inputs, outputs = map(OUTCOME_INPUT, outcomes), map(OUTCOME_OUTPUT, outcomes)
    tokens = array("q", chain.from_iterable(zip(inputs, outputs, strict=True)))
    costs = array("d", map(OUTCOME_COST, outcomes))
    db.execute(
        "INSERT INTO batch_answers(run_id, batch_id, requests, request_ids, usage, "
        "attempts, created_at_utc) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            batch_id,
            len(outcomes),
            pack_whole(orjson.dumps(ids)),
            pack_whole(_native(tokens) + _native(costs)),
            pack_whole(_native(array("i", tries))),
            now,
        ),
    )
    dumps = orjson.dumps
    db.executemany(
        "INSERT INTO batch_answer_frames(run_id, batch_id, frame, answers) VALUES (?, ?, ?, ?)",
        [
            (
                run_id,
                batch_id,
                number,
                pack_whole(
                    b"\n".join([dumps(o.response) for o in outcomes[start : start + FRAME]])
                ),
            )
            for number, start in enumerate(range(0, len(outcomes), FRAME))
        ],
    )


class KeptBatch:
    """The ids, tokens and costs of a batch kept whole, read once."""

    __slots__ = ("_positions", "at_utc", "costs", "ids", "tokens", "tries")

    def __init__(
        self, request_ids: bytes, usage: bytes, at_utc: str, tries: bytes | None = None
    ) -> None:
        ids: list[str] = orjson.loads(unpack_whole(request_ids))
        self.ids = ids
        self._positions: dict[str, int] | None = None
        data = unpack_whole(usage)
        split = len(ids) * 16
        self.tokens = _array("q", data[:split])
        self.costs = _array("d", data[split:])
        self.at_utc = at_utc
        # the try each answer came on (None: kept before the store recorded it)
        self.tries = None if tries is None else _array("i", unpack_whole(tries))

    @property
    def positions(self) -> dict[str, int]:
        """Each request's number in the batch, by its id (made when first asked for: a reader
        that walks the batch in order finds each by the number after the last)."""
        if self._positions is None:
            self._positions = {request_id: number for number, request_id in enumerate(self.ids)}
        return self._positions


class Recorded:
    """Answers of batches kept whole, read on demand through one connection; the last few
    batches and frames read are kept (a record never changes once written)."""

    def __init__(self, db: Connection) -> None:
        self._db = db
        self._batches: OrderedDict[tuple[str, int], KeptBatch] = OrderedDict()
        self._frames: OrderedDict[tuple[str, int, int], list[str]] = OrderedDict()

    def answer(self, run_id: str, batch_id: int, request_id: str) -> RecordedAnswer | None:
        """The request's answer, if its batch was kept whole."""
        batch = self._batch(run_id, batch_id)
        if batch is None:
            return None
        number = batch.positions.get(request_id)
        if number is None:
            return None
        frame = self._frame(run_id, batch_id, number // FRAME)
        return RecordedAnswer(
            frame[number % FRAME],
            batch.tokens[2 * number],
            batch.tokens[2 * number + 1],
            batch.costs[number],
            batch.at_utc,
        )

    def usage(self, run_id: str, batch_id: int, request_id: str, field: int) -> float | None:
        """The request's input tokens (0), output tokens (1) or cost (2), if its batch was kept
        whole; its answer is not unpacked."""
        batch = self._batch(run_id, batch_id)
        number = None if batch is None else batch.positions.get(request_id)
        if batch is None or number is None:
            return None
        value: float = batch.costs[number] if field == 2 else batch.tokens[2 * number + field]
        return value

    def batch(self, run_id: str, batch_id: int) -> KeptBatch | None:
        """What a batch kept whole holds besides its answers (None: it was not kept whole)."""
        return self._batch(run_id, batch_id)

    def frame(self, run_id: str, batch_id: int, number: int) -> list[str]:
        """The answers of a batch kept whole in frame `number`, each as its JSON."""
        return self._frame(run_id, batch_id, number)

    def _batch(self, run_id: str, batch_id: int) -> KeptBatch | None:
        key = (run_id, batch_id)
        if key in self._batches:
            self._batches.move_to_end(key)
            return self._batches[key]
        row = self._db.execute(
            "SELECT request_ids, usage, created_at_utc FROM batch_answers "
            "WHERE run_id = ? AND batch_id = ?",
            key,
        ).fetchone()
        if row is None:
            return None  # not kept whole (not remembered: it may be written later)
        batch = KeptBatch(row[0], row[1], row[2])
        self._batches[key] = batch
        if len(self._batches) > _KEPT_BATCHES:
            self._batches.popitem(last=False)
        return batch

    def _frame(self, run_id: str, batch_id: int, number: int) -> list[str]:
        key = (run_id, batch_id, number)
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            return frame
        row = self._db.execute(
            "SELECT answers FROM batch_answer_frames WHERE run_id = ? AND batch_id = ? "
            "AND frame = ?",
            key,
        ).fetchone()
        # decoded whole (one call, not 1,000); bytes that are not UTF-8 (ingest keeps none,
        # but a damaged store may hold some) are replaced, not left to stop every reader of
        # the frame's thousand answers
        frame = unpack_whole(row[0]).decode(errors="replace").split("\n")
        self._frames[key] = frame
        if len(self._frames) > _KEPT_FRAMES:
            self._frames.popitem(last=False)
        return frame


def register(db: Connection) -> None:
    """SQL functions that read a batch kept whole, on this connection:
    `recorded_answer(run_id, batch_id, request_id)`, the answer's JSON, and
    `recorded_usage(run_id, batch_id, request_id, field)`, its input tokens (0), output tokens
    (1) or cost (2); NULL for a request whose batch was not kept whole."""
    recorded = Recorded(db)

    def answer(run_id: str | None, batch_id: int | None, request_id: str | None) -> str | None:
        if run_id is None or batch_id is None or request_id is None:
            return None
        found = recorded.answer(run_id, batch_id, request_id)
        return None if found is None else found.response_json

    def usage(
        run_id: str | None, batch_id: int | None, request_id: str | None, field: int
    ) -> float | None:
        if run_id is None or batch_id is None or request_id is None:
            return None
        return recorded.usage(run_id, batch_id, request_id, field)

    db.create_function("recorded_answer", 3, answer)
    db.create_function("recorded_usage", 4, usage)
