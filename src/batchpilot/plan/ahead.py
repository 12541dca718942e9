"""Counting tokens ahead of the planner, in a second process.

Counting a chunk's tokens is most of the work of planning a large job. Threads cannot share
it: tiktoken lets go of the GIL while it counts a text but takes it back for every count it
returns, and two threads handing the GIL to each other that often spend more than the second
core gives. So a child process (`batchpilot.count_worker`) counts the chunks it has room for
while the planner reads, renders and hashes the next ones and counts those the child has no
room for: both cores work and neither waits long for the other. It starts with the first
chunk of a large input (`EAGER_BYTES`), else once the plan has spent counting what the process
would spend to start: as long as the planner took to count its first chunk, which builds the
encoding as the process must (and at least `START_AFTER` seconds). A small plan never pays for
starting it, and a plan of any size spends at most twice the CPU the counting needs.

Where the machine's counting service (`batchpilot.count_service`) can be reached, a plan of an
input under `SHARED_BYTES` gives it every chunk from the first and builds no encoding at all:
the service holds its encodings built across plans, and counts while the planner prepares
the next chunks. A larger input's plan keeps its own child, which with the planner counts on
both cores faster than the service alone, and repays the building of the encoding.

The plan is the same either way: whatever the child or the service does not count, a body it
fails on or every body once it is gone, the planner counts itself, raising a count's error
where it uses that count.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import orjson

from batchpilot.count_worker import HEADER, frame
from batchpilot.store.seen import SeenKeys
from batchpilot.tokens import TokenCount, count_request

if TYPE_CHECKING:
    from batchpilot.plan.planner import Item

__all__ = ["CHUNK", "WORKER_ENV", "Counter", "Prepared", "count", "look_up", "read_ahead"]

CHUNK = 128
"""Rows per chunk: a few chunks are in flight at most, so memory stays flat."""
DEPTH = 4
"""Chunks prepared before the planner takes the oldest."""
BACKLOG = 3
"""Chunks the counting process holds at most; the planner counts any chunk beyond them."""
START_AFTER = 0.1
"""Seconds the planner spends counting, at least, before it starts the counting process."""
EAGER_BYTES = 8 << 20
"""An input this large starts the counting process with the first chunk."""
SHARED_BYTES = 32 << 20
"""An input smaller than this is counted by the machine's counting service, where it runs."""
WORKER_ENV = "BATCHPILOT_COUNT_WORKER"
"""`0`: never start the counting process; `1`: start it with the first chunk."""
PIPE_BYTES = 1 << 20
STALL_SECONDS = 120.0
"""Seconds without an answer after which the planner stops waiting for the shared service."""


@dataclass(slots=True)
class Prepared:
    """One item made ready to plan: its body as it will be sent (fitted to a reasoning model),
    its canonical bytes and hash, what is wrong with it, and, once counted, its tokens."""

    item: Item
    body: dict[str, Any] | None = None
    canonical: bytes = b""
    problem: str | None = None
    notes: tuple[str, ...] = ()
    content_hash: str = ""
    counted: TokenCount | Exception | None = None
    first_row: bool | None = None
    """Whether the row's id is new, once the ids of its chunk are looked up together."""
    new_request: bool | None = None
    """Whether the request's id is new, likewise."""

    def ready(self) -> bool:
        """Whether the body can be counted (it has no problem)."""
        return self.body is not None and self.problem is None

    def tokens(self) -> TokenCount:
        """The body's count, counted now unless it was counted ahead."""
        counted = self.counted
        if counted is None:
            assert self.body is not None
            counted = self.counted = count_request(self.body, self.item.endpoint)
        if isinstance(counted, Exception):
            raise counted
        return counted


def count(prepared: Prepared) -> None:
    """Count a ready row's body, keeping the error of a count that fails."""
    if not prepared.ready() or prepared.counted is not None:
        return
    try:
        assert prepared.body is not None
        prepared.counted = count_request(prepared.body, prepared.item.endpoint)
    except Exception as exc:  # raised where the planner uses the count
        prepared.counted = exc


class Counter:
    """The counting process, and the rows of each chunk given to it, oldest first."""

    command = (sys.executable, "-m", "batchpilot.count_worker")

    def __init__(self, process: subprocess.Popen[bytes], capacity: int) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin: IO[bytes] = process.stdin
        self._listen(process.stdout.fileno(), capacity)

    def _listen(self, answers: int, capacity: int) -> None:
        """Nothing given yet; answers read from the descriptor `answers`."""
        self.capacity = capacity
        self.given: deque[list[Prepared]] = deque()
        self.alive = True
        self._warming: list[Prepared] | None = None
        self._received = bytearray()
        self._stdout = answers

    @classmethod
    def start(cls) -> Counter | None:
        """A new counting process, or None where one cannot be started (or its pipes cannot be
        read without blocking: on POSIX systems only)."""
        if os.name != "posix":
            return None
        try:
            process = subprocess.Popen(
                cls.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C stops the planner, which ends its input
            )
        except (OSError, ValueError):  # no interpreter to start (an embedded Python)
            return None
        assert process.stdin is not None and process.stdout is not None
        capacity = min(_widen(process.stdin), _widen(process.stdout))
        counter = cls(process, capacity)
        try:
            os.set_blocking(process.stdout.fileno(), False)
        except OSError:
            counter.close()
            return None
        return counter

    def offer(self, rows: list[Prepared]) -> list[Prepared] | None:
        """Give the process the ready rows of a chunk to count, unless it is still starting,
        holds `BACKLOG` chunks already, or the chunk would not fit in its pipe beside another;
        the rows given, or None."""
        if not self.alive:
            return None
        self._receive(wait_for=None)
        warming = self._warming
        if warming is not None and any(chunk is warming for chunk in self.given):
            return None
        if len(self.given) >= BACKLOG:
            return None
        given, parts = _pairs(rows, first_only=warming is None)
        if warming is None:  # one body first, whose answer says the process is ready
            self._warming = []
            self._send(parts, self._warming)
            return None
        return given if self._send(parts, given) else None

    def _send(self, parts: list[bytes], given: list[Prepared]) -> bool:
        message = frame(b"[" + b",".join(parts) + b"]")
        if self.given and len(message) > self.capacity:
            return False  # it would wait for the process to finish the chunk it holds
        try:
            self._stdin.write(message)
            self._stdin.flush()
        except OSError:
            self._fail()
            return False
        self.given.append(given)
        return True

    def wait_ready(self) -> None:
        """Wait until the process has answered the body it was first given, once given one."""
        if self._warming is not None:
            self.wait_for(self._warming)

    def wait_for(self, given: list[Prepared]) -> None:
        """Wait until the process has answered for `given` (or is gone)."""
        while self.alive and any(chunk is given for chunk in self.given):
            self._receive(wait_for=given)

    def close(self) -> None:
        """End the process (it holds nothing worth waiting for)."""
        self.alive = False
        with contextlib.suppress(OSError):
            self._stdin.close()
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _receive(self, wait_for: list[Prepared] | None) -> None:
        """Read what the process has written; with `wait_for`, wait for something first."""
        if wait_for is not None:
            select.select([self._stdout], [], [], 1.0)
        while True:
            try:
                data = os.read(self._stdout, PIPE_BYTES)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._fail()
                return
            self._received += data
        while len(self._received) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._received)
            end = HEADER.size + size
            if len(self._received) < end:
                break
            payload = bytes(self._received[HEADER.size : end])
            del self._received[:end]
            try:
                answers = orjson.loads(payload)
            except orjson.JSONDecodeError:
                answers = None
            if not self.given or not _apply(self.given.popleft(), answers):
                self._fail()  # a process that breaks its protocol is not trusted again
                return

    def _fail(self) -> None:
        """The process is gone: what it was given is counted by the planner."""
        self.alive = False
        self.given.clear()


class SharedCounter(Counter):
    """The machine's counting service (`batchpilot.count_service`), which keeps its encodings
    built: it is given every chunk, so the planner builds no encoding unless it goes away."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self._listen(connection.fileno(), PIPE_BYTES)
        self._warming = []  # it is ready when it answers; nothing to warm
        connection.setblocking(False)

    @classmethod
    def start(cls) -> SharedCounter | None:
        """A connection to the service (started if need be), or None where there is none."""
        from batchpilot.count_service import connect

        connection = connect()
        return None if connection is None else cls(connection)

    def offer(self, rows: list[Prepared]) -> list[Prepared] | None:
        if not self.alive:
            return None
        self._receive(wait_for=None)
        given, parts = _pairs(rows, first_only=False)
        return given if self._send(parts, given) else None

    def _send(self, parts: list[bytes], given: list[Prepared]) -> bool:
        pending = memoryview(frame(b"[" + b",".join(parts) + b"]"))
        deadline = time.monotonic() + STALL_SECONDS
        try:
            while pending and self.alive:
                try:
                    sent = self.connection.send(pending)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError from None
                    select.select([self._stdout], [self._stdout], [], 1.0)
                    self._receive(wait_for=None)  # answers it cannot write would stop it
                    continue
                pending = pending[sent:]
                deadline = time.monotonic() + STALL_SECONDS
        except OSError:
            self._fail()
        if not self.alive:
            return False
        self.given.append(given)
        return True

    def wait_for(self, given: list[Prepared]) -> None:
        deadline = time.monotonic() + STALL_SECONDS
        while self.alive and any(chunk is given for chunk in self.given):
            waiting = len(self.given)
            self._receive(wait_for=given)
            if len(self.given) < waiting:
                deadline = time.monotonic() + STALL_SECONDS
            elif time.monotonic() > deadline:
                self._fail()  # a service that stopped answering: the planner counts

    def close(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.connection.close()


def _pairs(rows: list[Prepared], first_only: bool) -> tuple[list[Prepared], list[bytes]]:
    """The ready rows that can be sent (all, or the first), and each as `[endpoint, body]`."""
    given, parts = [], []
    for prepared in rows:
        if not prepared.ready():
            continue
        try:
            body = orjson.dumps(prepared.body)
        except TypeError:  # integers past 64 bits, keys that are not strings
            continue
        given.append(prepared)
        parts.append(b"[" + _endpoint_json(prepared.item.endpoint) + b"," + body + b"]")
        if first_only:
            break
    return given, parts


@functools.cache
def _endpoint_json(endpoint: str) -> bytes:
    return orjson.dumps(endpoint)


def _apply(given: list[Prepared], answers: Any) -> bool:
    """Keep the counts the process answered for `given`; whether the answer was well formed."""
    if not isinstance(answers, list) or len(answers) != len(given):
        return given == [] and isinstance(answers, list)  # the warm-up's answer
    if not all(answer is None or _a_count(answer) for answer in answers):
        return False
    for prepared, answer in zip(given, answers, strict=True):
        if answer is not None:
            prepared.counted = TokenCount(answer[0], answer[1])
    return True


def _a_count(answer: Any) -> bool:
    return (
        isinstance(answer, list)
        and len(answer) == 2
        and type(answer[0]) is int
        and type(answer[1]) is bool
    )


def _widen(pipe: IO[bytes]) -> int:
    """Make a pipe hold `PIPE_BYTES` where the system allows it; the bytes it holds."""
    try:
        import fcntl

        return int(fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES))
    except (ImportError, AttributeError, OSError):
        return 1 << 16


def _start_after(input_bytes: int | None) -> float | None:
    setting = os.environ.get(WORKER_ENV, "")
    if setting == "0":
        return None
    eager = setting == "1" or (input_bytes is not None and input_bytes >= EAGER_BYTES)
    return 0.0 if eager else START_AFTER


def _shared(input_bytes: int | None) -> bool:
    """Whether the machine's counting service is asked to count the input."""
    if os.environ.get(WORKER_ENV, "") in ("0", "1"):
        return False
    return input_bytes is None or input_bytes < SHARED_BYTES


def read_ahead(
    items: Iterable[Item],
    prepare: Callable[[Item], Prepared],
    settle: Callable[[list[Prepared]], None],
    input_bytes: int | None = None,
) -> Iterator[Prepared]:
    """`items` prepared and counted a few chunks ahead of the caller, in input order; `settle`
    sees each chunk once it is counted, before its rows are yielded. `input_bytes`, the size
    of the input where it is known, starts the counting process at once for a large one."""
    start_after = _start_after(input_bytes)
    counting = -1.0  # the first chunk's count, which builds the encoding, sets the bar
    counter: Counter | None = None
    pending: deque[tuple[list[Prepared], list[Prepared] | None]] = deque()
    try:
        if _shared(input_bytes):  # a larger input its own process and the planner count
            counter = SharedCounter.start()
            start_after = None if counter is not None else start_after
        rows: list[Prepared] = []
        for item in items:
            rows.append(prepare(item))
            if len(rows) < CHUNK:
                continue
            if start_after is not None and (start_after == 0 or counting >= start_after):
                counter, start_after = Counter.start(), None
            pending.append((rows, counter.offer(rows) if counter is not None else None))
            rows = []
            if len(pending) >= DEPTH:
                chunk, given = pending.popleft()
                spent = _count(chunk, given, counter)
                if counting < 0:
                    counting = 0.0
                    if start_after:  # what starting the process would cost, about
                        start_after = max(start_after, spent)
                else:
                    counting += spent
                settle(chunk)
                yield from chunk
        pending.append((rows, counter.offer(rows) if counter is not None and rows else None))
        while pending:
            chunk, given = pending.popleft()
            _count(chunk, given, counter)
            settle(chunk)
            yield from chunk
    finally:
        if counter is not None:
            counter.close()


def _count(rows: list[Prepared], given: list[Prepared] | None, counter: Counter | None) -> float:
    """Count a chunk's rows, once the process has answered for those given to it; the seconds
    spent counting here."""
    if given is not None and counter is not None:
        counter.wait_for(given)
    started = time.perf_counter()
    for prepared in rows:
        count(prepared)
    return time.perf_counter() - started


def look_up(seen: SeenKeys, rows: list[Prepared]) -> None:
    """Whether each row's id and request id are new, in two lookups for the chunk."""
    for prepared, first in zip(
        rows, seen.firsts("rows", [p.item.row_id for p in rows]), strict=True
    ):
        prepared.first_row = first
    ready = [prepared for prepared in rows if prepared.ready()]
    ids = [prepared.item.custom_id or prepared.content_hash for prepared in ready]
    for prepared, new in zip(ready, seen.firsts("requests", ids), strict=True):
        prepared.new_request = new
