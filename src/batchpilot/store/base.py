"""What every store offers: runs, rows, requests, batches, attempts, results and events, spoken
in records and state moves, never in connections, cursors or rows of a database.

`SQLiteStore` is the first implementation; `tests/test_store_contract.py` is the contract suite
that any other (a PostgreSQL store for many workers) must pass by adding itself to `STORES`. A
store object may be shared by the threads of one process: each thread works in its own
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from batchpilot.store.records import (
    AnswerFilter,
    AnswerPage,
    AttemptGroup,
    AttemptRecord,
    BatchRecord,
    DeliveryRow,
    JoinedRow,
    NewRequest,
    NewRow,
    Outcome,
    PendingRequest,
    RunRecord,
    TaskStateRecord,
)
from batchpilot.store.shared import Claim, OrgLimit
from batchpilot.store.states import RunState

__all__ = ["Store"]


class Store(Protocol):
    """The store's whole surface. Every state change goes through the transition tables in
    `batchpilot.store.states`; a move they do not allow raises IllegalTransition."""

    @property
    def store_id(self) -> str:
        """This store's own id, carried by its remote objects (names, metadata)."""
        ...

    @property
    def where(self) -> str:
        """Where the store lives, as messages name it (a state directory, a database)."""
        ...

    def close(self) -> None: ...

    def tx(self) -> AbstractContextManager[None]:
        """One unit of work of the calling thread: the store calls made inside it commit together
        or not at all (an exception rolls them back); nested units join the outer one. It hands
        out nothing: every read and write is a call of this surface."""
        ...

    def realtime_sent_last_day(self, run_id: str) -> int:
        """Real-time tries that ended in the last 24 hours, in every run of this store, of the
        models that `run_id` uses (real-time limits are per model)."""
        ...

    def create_run(self, run: RunRecord) -> None: ...

    def run(self, run_id: str) -> RunRecord | None: ...

    def runs(self, job_name: str | None = None) -> list[RunRecord]: ...

    def move_run(self, run_id: str, target: RunState) -> RunRecord:
        """The only way a run's status changes: checked against `RUN_MOVES` and the stored
        status in one step (IllegalTransition otherwise); finished and cancelled runs get their
        end time. Returns the run as it now is."""
        ...

    def set_run_spec(self, run_id: str, spec_json: str, budget_usd: float | None) -> None:
        """The job's latest settings (strategy, deadline, budget) for a continued run."""
        ...

    def set_budget(self, run_id: str, budget_usd: float | None) -> None: ...

    def add_planned(
        self, run_id: str, rows: Sequence[NewRow], requests: Sequence[NewRequest]
    ) -> None:
        """Planned rows, then planned requests, pending, in one statement each: a row whose
        index is already planned and a request whose id is are kept as they were. A request's
        body is kept against its first row's data as that row is stored."""
        ...

    def add_row(
        self,
        run_id: str,
        index: int,
        row_id: str,
        source: str,
        request_id: str | None,
        data: dict[str, Any] | None,
        skip_reason: str | None = None,
    ) -> None: ...

    def add_request(
        self,
        run_id: str,
        request_id: str,
        content_hash: str,
        endpoint: str,
        model: str,
        body: bytes,
        input_tokens: int,
        max_output_tokens: int,
        first_row: int,
        *,
        worst: tuple[int | None, float | None, float | None] | None = None,
    ) -> None:
        """A planned request; `worst` is its worst case (output tokens, USD, batch USD), by default
        `max_output_tokens` priced when it is reserved."""
        ...

    def apply_cache(
        self,
        run_id: str,
        accept: Callable[[PendingRequest, dict[str, Any]], bool] | None = None,
    ) -> int:
        """Answer pending requests from the result cache (same content hash, earlier run). With
        `accept`, only with the cached answers it accepts; the others stay pending, to be sent."""
        ...

    def pending(
        self,
        run_id: str,
        limit: int,
        *,
        from_end: bool = False,
        after_row: int | None = None,
        bodies: bool = True,
    ) -> list[PendingRequest]:
        """Pending requests in input order (or from the end of the input, `from_end`); with
        `after_row`, only those whose first row comes after it (before it, `from_end`), so that
        a caller pages through them. `bodies=False` leaves bodies empty and gives each body's
        length in `body_bytes` instead."""
        ...

    def pending_totals(self, run_id: str) -> tuple[int, int, int]:
        """(requests, input tokens, most output tokens) of the pending requests."""
        ...

    def in_flight(self, run_id: str) -> list[PendingRequest]:
        """Requests left in flight on the real-time lane (by a crash), bodies left empty."""
        ...

    def unpriced(self, run_id: str) -> list[tuple[str, bool]]:
        """(model, has an output bound) of the requests still to end whose worst case in USD was not
        known when they were planned."""
        ...

    def request_body(self, run_id: str, request_id: str) -> bytes: ...

    def row_data(self, run_id: str, row_index: int) -> dict[str, Any] | None: ...

    def failure_reasons(self, run_id: str) -> dict[str, int]:
        """How many failed attempts each kind of reason caused (the reason's first word)."""
        ...

    def request_counts(self, run_id: str) -> dict[str, int]:
        """How many of the run's requests are in each state (every state named), kept up to date
        by every move rather than counted on each call."""
        ...

    def move_requests(
        self,
        run_id: str,
        request_ids: Sequence[str],
        current: str,
        target: str,
    ) -> None:
        """Move requests that are all in `current` to `target`, or raise."""
        ...

    def claim_realtime(
        self,
        run_id: str,
        request_id: str,
        *,
        worker: str | None = None,
        held_usd: float = 0.0,
        budget_usd: float | None = None,
    ) -> bool:
        """Move one pending request to realtime in a single statement (the real-time lane does
        this for every request), owned by `worker` and holding `held_usd` (its worst case) while
        it is in flight; False when it is no longer pending. With `budget_usd`, also False when
        what every worker of the run has spent and holds (`holdings`) and `held_usd` would
        exceed it, checked with the run locked (`lock_run`)."""
        ...

    def record_attempt(self, run_id: str, outcome: Outcome) -> int:
        """A real-time try of a request in flight that will be tried again: the attempt is
        recorded (its cost and error), the request stays in flight (IllegalTransition when it
        is not). Returns the attempt's number."""
        ...

    def fail_requests(self, run_id: str, request_ids: Sequence[str], reason: str) -> None:
        """Pending requests that can never be sent (too large, over budget) fail with a reason."""
        ...

    def cancel_pending(self, run_id: str, reason: str) -> int:
        """Every pending request is no longer needed: it moves to cancelled, never sent."""
        ...

    def revive_cancelled(self, run_id: str) -> int:
        """Cancelled requests are wanted again: back to pending."""
        ...

    def next_row_index(self, run_id: str) -> int:
        """One past the last row planned so far (0 for a run with no rows)."""
        ...

    def answered_rows(self, run_id: str) -> Iterator[tuple[str, str]]:
        """(request id, response JSON) of every row whose request succeeded, in input order."""
        ...

    def row_outcomes(self, run_id: str) -> dict[str, int]:
        """How many rows have each request state (`skipped` for rows with no request)."""
        ...

    def create_batch(
        self,
        run_id: str,
        requests: Sequence[PendingRequest],
        *,
        size: int,
        file_name_prefix: str,
    ) -> int:
        """A local batch of pending requests: they move to queued, the batch to planned."""
        ...

    def batch(self, run_id: str, batch_id: int) -> BatchRecord: ...

    def batches(self, run_id: str, states: Iterable[str] | None = None) -> list[BatchRecord]: ...

    def batch_requests(
        self,
        run_id: str,
        batch_id: int,
        *,
        bodies: bool = True,
    ) -> list[PendingRequest]:
        """The requests of a live batch, in input order; `bodies=False` leaves bodies empty."""
        ...

    def move_batch(self, run_id: str, batch_id: int, target: str, **fields: Any) -> BatchRecord:
        """The only way a batch changes state: checked against the table and the row."""
        ...

    def update_batch(self, run_id: str, batch_id: int, **fields: Any) -> None:
        """Change fields that are not the state (remote status, counts)."""
        ...

    def finish_batch(
        self,
        run_id: str,
        batch_id: int,
        outcomes: Sequence[Outcome],
        **fields: Any,
    ) -> None:
        """Ingest a finished remote batch: every request's outcome, the spend, the batch state."""
        ...

    def finish_realtime(self, run_id: str, *outcomes: Outcome) -> None:
        """Record real-time answers (or failures) as they arrive, in one transaction."""
        ...

    def money(self, run_id: str) -> tuple[float, float]:
        """(spent, reserved) in USD: settled usage, and worst cases held for live batches."""
        ...

    def token_totals(self, run_id: str) -> tuple[int, int]: ...

    def joined_rows(self, run_id: str) -> Iterator[JoinedRow]:
        """Every row in input order with its request and result (streamed)."""
        ...

    def create_task(self, run: RunRecord, state_json: str) -> None:
        """A task's run and its first state, together."""
        ...

    def task_state(self, run_id: str) -> TaskStateRecord | None: ...

    def request_of_row(self, run_id: str, row_id: str) -> str | None:
        """The request id of the row with this id (a task's key), or None when there is none."""
        ...

    def count_task_round(self, run_id: str) -> None: ...

    def undelivered(self, run_id: str, limit: int) -> list[DeliveryRow]:
        """Rows of a task whose request has ended and which the task has not been given yet, in row
        order, with the request's body, outcome, answer and total cost."""
        ...

    def deliver(self, run_id: str, state_json: str, delivered: Sequence[tuple[int, bool]]) -> None:
        """Mark rows as given to the task and save the state they led to, in one transaction."""
        ...

    def event(self, run_id: str, kind: str, message: str, data: Any = None) -> None: ...

    def events(self, run_id: str, since: int = 0) -> list[dict[str, Any]]: ...

    def attempts(self, run_id: str, request_id: str | None = None) -> Iterator[AttemptRecord]:
        """Every try of the run's requests in the order they ended, answers from the cache
        included (streamed); with `request_id`, that request's tries in order."""
        ...

    def attempt_groups(self, run_id: str) -> Iterator[AttemptGroup]:
        """The tries of `attempts`, in the same order, with the answers each batch kept whole
        got on one try added up into one group (what a report needs of them)."""
        ...

    def answers(self, run_id: str, where: AnswerFilter, offset: int, limit: int) -> list[JoinedRow]:
        """One page of the run's rows in input order, with their requests and answers."""
        ...

    def count_answers(self, run_id: str, where: AnswerFilter) -> int:
        """How many of the run's rows `answers` would page through."""
        ...

    def answer_page(
        self, run_id: str, where: AnswerFilter, offset: int, limit: int, count_ahead: int
    ) -> AnswerPage:
        """One page of `answers` and the count of the rows its filter matches, in one reading:
        where the rows must be read one by one to find them (a text search, say), they are
        read until `count_ahead` more than the page are found, and the count says whether it
        is all of them; the store's counts and indexes answer the rest exactly."""
        ...

    def planned_totals(self, run_id: str) -> dict[str, tuple[int, int]]:
        """(requests, input tokens) of every request of the run, by model."""
        ...

    # many workers: leases on runs ------------------------------------------------------------

    def claim_run(
        self,
        worker_id: str,
        ttl_s: float,
        run_ids: Sequence[str] | None = None,
        skip: Sequence[str] = (),
        per_run: int | None = 1,
    ) -> Claim | None:
        """A run with work left (planned, or left running) of a kind a worker drives, that
        fewer than `per_run` live leases of other workers hold (None: any number) and none of
        `worker_id`'s (among `run_ids` when given, never one of `skip`), leased to `worker_id`
        for `ttl_s` seconds; None when there is none. Leases that ran out on it go (`previous`
        names one). Two workers never take the last place on a run (PostgreSQL: `FOR UPDATE
        SKIP LOCKED`, the leases read again once the run's row is locked)."""
        ...

    def take_run(
        self, run_id: str, worker_id: str, ttl_s: float, per_run: int | None = 1
    ) -> str | None:
        """Lease `run_id` to `worker_id` (whatever its status) unless `per_run` live leases of
        other workers hold it; None when taken, else the id of one of those workers."""
        ...

    def renew_lease(self, run_id: str, worker_id: str, ttl_s: float) -> bool:
        """Extend the worker's lease to `ttl_s` seconds from now; False when it has run out
        (another worker may have the run by now) or is not the worker's."""
        ...

    def release_run(self, run_id: str, worker_id: str) -> None:
        """Give the run's lease back (nothing when another worker holds it)."""
        ...

    def lease_of(self, run_id: str) -> tuple[str, float] | None:
        """(worker id, seconds left, negative once run out) of the run's lease that lasts
        longest, if it has one."""
        ...

    def drivers(self, run_id: str) -> list[str]:
        """The workers whose live leases hold the run (its co-drivers)."""
        ...

    # many workers on one run ----------------------------------------------------------------

    def lock_run(self, run_id: str) -> None:
        """Inside `tx()`: no other worker's money check on the run runs until the transaction
        ends (PostgreSQL: the run's row locked; SQLite's write transactions run one at a time)."""
        ...

    def holdings(self, run_id: str) -> tuple[float, float, float, float]:
        """(spent, reserved, held, in flight) in USD, over every worker of the run: settled
        usage, worst cases reserved for batches created or being created, worst cases of
        batches formed but not yet reserved, and of real-time requests in flight."""
        ...

    def adopt_batches(self, run_id: str, worker_id: str) -> list[int]:
        """The run's queued and live batches whose worker has no live lease on it (or that no
        worker owns) become `worker_id`'s, in one statement conditional on that, so that each is
        taken over by one worker only; their ids."""
        ...

    def orphans_in_flight(self, run_id: str, worker_id: str) -> list[PendingRequest]:
        """Requests in flight on the real-time lane whose worker has no live lease on the run
        (or that no worker owns), other than `worker_id`'s; bodies left empty."""
        ...

    # one organisation's limits ---------------------------------------------------------------

    def queue_left(self, account: str, model: str) -> int | None:
        """The enqueued tokens the account's limit for `model` leaves, after every batch of
        every run queued or live on it (None: no limit set). Inside `tx()`, the limit stays
        locked until the transaction ends, so that forming a batch and `hold_queue` of its
        tokens are one step with respect to every other worker."""
        ...

    def hold_queue(self, account: str, model: str, run_id: str, batch_id: int, tokens: int) -> None:
        """The batch's input tokens count against the account's queue for `model` until the
        batch leaves the queue (ingested or abandoned)."""
        ...

    def take_rate(self, account: str, model: str, tokens: int) -> float:
        """Reserve one real-time request of `tokens` under the account's requests and tokens per
        minute for `model`: 0 when reserved, else the seconds to wait before trying again."""
        ...

    def set_limits(
        self,
        account: str,
        model: str,
        *,
        queue_tokens: int | None,
        rpm: int | None,
        tpm: int | None,
    ) -> None:
        """Set the account's limits for `model` (None: no limit; all None removes them)."""
        ...

    def limits(self) -> list[OrgLimit]:
        """Every account and model with a limit set or tokens in the queue."""
        ...
