"""The batch lane: submit within the queue and money budgets, poll, ingest, retry, finish.

Exactly once: before every remote side effect (upload, batch creation) an intent is committed;
every remote object carries the run id and local batch id (file name, batch metadata); on every
start, and before repeating an intent, the provider's listing is searched and what is found is
adopted instead of being created again.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from batchpilot.errors import (
    BudgetExceeded,
    ProviderRejected,
    ProviderUnavailable,
    UserInputError,
)
from batchpilot.lanes.realtime import RealtimeLane, recover_inflight
from batchpilot.plan.ids import request_line
from batchpilot.plan.strategies import Estimate, SplitInputs, hybrid_split
from batchpilot.plan.worst import reservation
from batchpilot.pricing import usage_cost
from batchpilot.providers.base import (
    AuthenticationFailed,
    Provider,
    RemoteBatch,
    RemoteNotFound,
    RemoteStatus,
)
from batchpilot.run.adopt import find_batch, find_upload, record_submitted, tags_for
from batchpilot.run.cancel import cancel_batches
from batchpilot.run.ingest import classify, read_lines
from batchpilot.run.settings import RunSettings
from batchpilot.run.share import LaneShare, LaneThread
from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.target import TargetCounter
from batchpilot.store import (
    BatchRecord,
    BatchState,
    Outcome,
    PendingRequest,
    RequestState,
    Store,
)

__all__ = ["Interrupt", "Runner"]

log = logging.getLogger(__name__)

LIVE = (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING, BatchState.SUBMITTED)
TO_SUBMIT = (BatchState.PLANNED, BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING)
UNRESERVED = (BatchState.PLANNED, BatchState.UPLOADING, BatchState.UPLOADED)
IN_QUEUE = (BatchState.PLANNED, *LIVE)
COMPLETION_WINDOW_S = 24 * 3600.0  # the window every batch is created with
LANE_TICK_S = 0.02  # after a real-time answer, wait this long so that a burst is seen at once


def _usd(amount: float | None) -> str:
    """Dollars readable at any size: $25.00, but $0.000631 rather than $0.00."""
    if amount is None:
        return "no limit"
    if abs(amount) >= 0.1 or amount == 0:
        return f"${amount:,.2f}"
    return f"${amount:.{2 - math.floor(math.log10(abs(amount)))}f}"  # three significant digits


def _duration(seconds: float) -> str:
    """Provider time, readable: 45 s, 12 min, 20.4 h."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Interrupt:
    """Ctrl-C handling: the first finishes the current step and stops; the second also cancels
    the remote batches. `wake` ends the runner's wait (also set by real-time answers)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.cancel = threading.Event()
        self.wake = threading.Event()
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.cancel.set()
        self.stop.set()
        self.wake.set()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@dataclass
class _Poll:
    due: float = 0.0
    interval: float = 0.0


@dataclass
class Runner:
    store: Store
    provider: Provider
    run_id: str
    settings: RunSettings
    files_dir: Path
    on_progress: Callable[[RunStatus], None] | None = None
    interrupt: Interrupt = field(default_factory=Interrupt)
    learned_capacity: dict[str, int] = field(default_factory=dict)
    _polls: dict[int, _Poll] = field(default_factory=dict)
    _fresh: set[tuple[int, str]] = field(default_factory=set)
    _backoff_until: float = 0.0
    use_cache: bool = True
    lane: RealtimeLane | None = None
    check: Callable[[PendingRequest, dict[str, Any]], str | None] | None = None
    _cancelled_late: set[int] = field(default_factory=set)
    target: TargetCounter | None = None
    """Target mode: once met, nothing more is sent and live batches are cancelled."""
    _goal_met: bool = False
    _share: LaneShare | None = None
    _lane_thread: LaneThread | None = None
    _balanced_at: float = -math.inf
    _announced: int | None = None
    _total: int | None = None

    # the loop -------------------------------------------------------------------------------

    def run(self) -> RunStatus:
        """Drive the run until every request has ended, or until stopped or detached."""
        if self.settings.strategy != "batch" and self.lane is None:
            raise UserInputError(f"strategy {self.settings.strategy} needs a real-time client")
        self._check_worst_cases()
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.store.set_run_status(self.run_id, "running")
        accept = None if self.check is None else self._cached_ok
        cached = self.store.apply_cache(self.run_id, accept) if self.use_cache else 0
        if cached:
            self.store.event(self.run_id, "cache", f"{cached} requests answered from the cache")
        recovered, charged = recover_inflight(
            self.store, self.run_id, self.settings.prices, self.settings.retry
        )
        if recovered:
            self.store.event(
                self.run_id,
                "recovered",
                f"{recovered} real-time requests were in flight at a crash; each may have run "
                f"and is counted at its worst case ({_usd(charged)} in all)",
            )
        try:
            return self._loop()
        except AuthenticationFailed as exc:
            # The key, not a batch, is wrong: stop with every intent kept, so that a run with
            # the right key continues instead of finding its requests failed for good.
            self._close_lane()
            self.store.event(self.run_id, "error", str(exc))
            self.store.set_run_status(self.run_id, "stopped")
            raise
        finally:
            self._close_lane()

    def _check_worst_cases(self) -> None:
        """Under a budget, every request still to send needs a worst case in USD."""
        if self.settings.budget_usd is None:
            return
        prices = self.settings.prices
        for model, bounded in self.store.unpriced(self.run_id):
            if not bounded:
                raise UserInputError(
                    f"nothing bounds the output of model {model!r} (no max_tokens in its "
                    "requests, and its maximum output and context window are unknown), so a "
                    "budget cannot be kept; set params.max_tokens (or limits.max_output_tokens, "
                    "the model's maximum output), or run without a budget"
                )
            if prices is None or not prices.has(model):
                raise UserInputError(
                    f"no price for model {model!r}, so a budget cannot be kept; add one under "
                    f"`prices:` in the job file: prices: {{{model}: {{input: ..., output: ...}}}}"
                )

    @property
    def share(self) -> LaneShare:
        if self._share is None:
            self._share = LaneShare(self.run_id, self.settings.budget_usd, self.interrupt.wake)
        return self._share

    def _cached_ok(self, request: PendingRequest, body: dict[str, Any]) -> bool:
        """A cached answer counts only if it passes this run's checks (another run's may differ)."""
        assert self.check is not None
        return self.check(request, body) is None

    def _loop(self) -> RunStatus:
        while True:
            if self.interrupt.stop.is_set():
                return self._stop()
            self._check_lane()
            progressed = self._poll_live()
            if self.interrupt.stop.is_set():
                pass
            elif self._goal_reached():
                progressed |= self._wind_down()
            else:
                progressed |= self._dispatch()
            self._check_lane_budget()
            status = self.status()
            if self.on_progress is not None:
                self.on_progress(status)
            if status.finished:
                self._close_lane()
                self.store.set_run_status(self.run_id, "finished")
                ended = (
                    "every request has ended"
                    if status.total
                    else "nothing to do: the run has no requests"
                )
                self.store.event(self.run_id, "finished", ended)
                return self.status()
            if self.settings.detach and not self.store.batches(self.run_id, TO_SUBMIT):
                self._close_lane()
                self.store.event(self.run_id, "detached", "submitted; not waiting")
                return self.status()
            if not progressed:
                self._sleep()

    def _goal_reached(self) -> bool:
        if not self._goal_met and self.target is not None and self.target.met():
            self._goal_met = True
            self.store.event(
                self.run_id, "target", f"{self.target.goal} valid; sending nothing more"
            )
        return self._goal_met

    def _wind_down(self) -> bool:
        """After the target is met: the real-time lane stops (what is on the wire finishes),
        batches not yet created are dropped, live ones are cancelled (what they answered is
        kept: it is paid for); once none is live, what is still pending is cancelled."""
        progressed = False
        if self._lane_thread is not None:
            with self.share.lock:
                self.share.reserve = 0  # the lane takes nothing more
            self._close_lane()
        progressed |= self._drop_unsent()
        progressed |= self._cancel_live("target", "no longer needed")
        if not self.store.batches(self.run_id, LIVE):
            reason = "not_needed: the target was met before it was sent"
            progressed |= self.store.cancel_pending(self.run_id, reason) > 0
        return progressed

    def status(self) -> RunStatus:
        status = run_status(self.store, self.run_id, self.settings.budget_usd)
        if self.target is not None:
            status.target, status.valid = self.target.goal, self.target.count()
        if self._lane_thread is not None and self.lane is not None and status.requests["pending"]:
            wait = self.lane.throttle.day_wait()
            if wait > 0:
                status.waiting.append(
                    f"the day's {self.lane.throttle.limits.rpd} real-time requests are used "
                    f"up: the next one in about {_duration(wait)}"
                )
        return status

    def _sleep(self) -> None:
        now = time.monotonic()
        dues = [poll.due for poll in self._polls.values()] + [self._backoff_until]
        wait = min([due - now for due in dues if due > now], default=self.settings.poll_interval_s)
        wait = max(0.01, min(wait, self.settings.poll_interval_s))
        woken = self.interrupt.wake.wait(wait)
        self.interrupt.wake.clear()
        if woken and not self.interrupt.stop.is_set():
            self.interrupt.stop.wait(min(LANE_TICK_S, wait))

    def _stop(self) -> RunStatus:
        self._close_lane()
        live = self.store.batches(self.run_id, [BatchState.SUBMITTED])
        if self.settings.cancel_on_exit or self.interrupt.cancel.is_set():
            done = cancel_batches(self.store, self.provider, self.run_id, live, "on stop")
            count = sum(d.outcome == "cancelled" for d in done)
            self.store.event(
                self.run_id, "cancelled", f"cancelled {count} of {len(live)} remote batches"
            )
        else:
            self.store.event(
                self.run_id, "stopped", f"stopped with {len(live)} batches still running remotely"
            )
        self.store.set_run_status(self.run_id, "stopped")
        return self.status()

    # the real-time lane ----------------------------------------------------------------------

    def _start_lane(self) -> None:
        if self._lane_thread is not None or self.lane is None:
            return
        self._lane_thread = LaneThread(self.lane, self.share, self.store, self.interrupt.stop)
        self._lane_thread.start()

    def _close_lane(self) -> None:
        """Stop the real-time lane (those on the wire finish) and record what it did."""
        thread, self._lane_thread = self._lane_thread, None
        if thread is None:
            return
        report = thread.close()
        if report.succeeded or report.failed or report.retried:
            self.store.event(
                self.run_id,
                "realtime",
                f"{report.succeeded} answered, {report.failed} failed, {report.retried} retried "
                "in real time",
            )

    def _check_lane(self) -> None:
        """Raise in this thread what stopped the lane's thread (a refused key)."""
        thread = self._lane_thread
        if thread is not None and thread.error is not None:
            raise thread.error

    def _check_lane_budget(self) -> None:
        """Stop the run when the lane waits for money that nothing will give back: nothing in
        flight, no batch in the queue, and the batch lane has had its chance this round."""
        if self._lane_thread is None or not self.share.stuck(self.store):
            return
        if self.store.batches(self.run_id, LIVE):
            return
        if self.store.request_counts(self.run_id)["pending"]:
            spent, _ = self.store.money(self.run_id)
            self._close_lane()
            self.store.set_run_status(self.run_id, "stopped")
            raise BudgetExceeded(
                f"the budget of {_usd(self.settings.budget_usd)} is used up ({_usd(spent)} "
                "spent); raise budget.max_usd (or --budget) and run again"
            )

    # choosing a lane -------------------------------------------------------------------------

    def _dispatch(self) -> bool:
        strategy = self.settings.strategy
        if strategy == "batch":
            return self._submit_more()
        if strategy == "realtime":
            self.share.reserve = None
            self._start_lane()
            return self._drop_unsent()  # batches left by an earlier run with another strategy
        if self._deadline_near():
            self.share.reserve = None  # everything that is pending goes real time
            self._start_lane()
            return self._drop_unsent() | self._cancel_late_batches()
        self._rebalance()
        progressed = self._submit_more()
        self._start_lane()  # after the batches: a batch's turnaround starts when it is created
        return progressed

    def _rebalance(self) -> None:
        """How many of the pending requests go real time, chosen again from what is pending,
        the batches in the queue, the turnaround learned so far and what is left of the day's
        real-time requests, so that both lanes finish together (the cheapest such split)."""
        now = time.monotonic()
        if now - self._balanced_at < self.settings.poll_interval_s:
            return
        self._balanced_at = now
        assert self.lane is not None
        throttle = self.lane.throttle
        limits = throttle.limits
        turnaround = self._turnaround()
        with self.share.lock:
            count, tokens, most_out = self.store.pending_totals(self.run_id)
            first = self.store.pending(self.run_id, 1)
            if not first:
                self.share.reserve = 0
                return
            model = first[0].model
            split = hybrid_split(
                SplitInputs(
                    count,
                    tokens,
                    most_out // 2,
                    self._capacity(model),
                    turnaround,
                    limits.rpm,
                    limits.tpm,
                    limits.rpd,
                    live=self._in_queue(model, turnaround),
                    day_left=throttle.day_left(),
                )
            )
            self.share.reserve = split.realtime_requests
            planned = self.share.claimed + split.realtime_requests
        self._announce(planned, split, count)

    def _announce(self, planned: int, split: Estimate, pending: int) -> None:
        """An event when the split changes by more than the real-time lane's own progress
        (`planned`: what it has taken plus what it is to take) and rounding."""
        if self._total is None:
            self._total = sum(self.store.request_counts(self.run_id).values())
        last = self._announced
        if last is not None and abs(planned - last) <= max(1, self._total // 100):
            return
        self._announced = planned
        self.store.event(
            self.run_id,
            "hybrid",
            f"{split.realtime_requests} of the {pending} pending requests go real time; both "
            f"lanes done in about {_duration(split.makespan_s)}",
        )

    def _in_queue(self, model: str, turnaround: float) -> tuple[tuple[float, int], ...]:
        """(seconds until it finishes, input tokens) of each batch of `model` in the queue."""
        now = datetime.now(UTC)
        held = []
        for batch in self.store.batches(self.run_id, IN_QUEUE):
            if batch.model != model:
                continue
            elapsed = 0.0
            if batch.submitted_at_utc:
                started = datetime.fromisoformat(batch.submitted_at_utc.replace("Z", "+00:00"))
                elapsed = (now - started).total_seconds() * self.settings.time_scale
            held.append((max(0.0, turnaround - elapsed), batch.input_tokens))
        return tuple(held)

    def _turnaround(self) -> float:
        """Seconds a batch takes (provider time): the median of this run's completed batches
        (a cancelled or failed one says nothing about it), else the setting."""
        spans = sorted(
            _seconds_between(b.submitted_at_utc, b.finished_at_utc)
            for b in self.store.batches(self.run_id, [BatchState.FINISHED])
            if b.submitted_at_utc and b.finished_at_utc and b.remote_status == "completed"
        )
        if not spans:
            return self.settings.turnaround_s
        return spans[len(spans) // 2] * self.settings.time_scale

    def _deadline_near(self) -> bool:
        deadline = self.settings.deadline
        if deadline is None:
            return False
        wall = self._turnaround() / self.settings.time_scale
        return datetime.now(UTC) + timedelta(seconds=wall) > deadline

    def _drop_unsent(self) -> bool:
        """Batches not created yet are dropped, their requests back to pending, once the batch
        lane is not to take them (a near deadline, real time only, a met target). A batch whose
        creation may have happened is adopted if the provider lists it as ours (and is then
        polled, or cancelled, like any live batch), else dropped too."""
        if time.monotonic() < self._backoff_until:
            return False
        progressed = False
        for batch in self.store.batches(self.run_id, TO_SUBMIT):
            tried = batch.state == BatchState.CREATING and (batch.id, "create") not in self._fresh
            try:
                remote = self._find_remote(batch) if tried else None
            except ProviderUnavailable as exc:
                self._back_off(f"looking for batch {batch.id}: {exc}")
                return progressed
            progressed = True
            if remote is not None:
                self.store.event(self.run_id, "adopted", f"batch {batch.id}: found {remote.id}")
                self._submitted(batch, remote)
                continue
            self._fresh.discard((batch.id, "create"))
            with self.share.lock:
                self.store.move_batch(self.run_id, batch.id, BatchState.ABANDONED, reserved_usd=0.0)
                self._hold()
            self.store.event(self.run_id, "dropped", f"batch {batch.id} was never created")
        return progressed

    def _cancel_late_batches(self) -> bool:
        """Batches that cannot finish by the deadline are cancelled; what they did not run comes
        back as pending once their partial results are ingested, and then goes real time."""
        return self._cancel_live("deadline", "to finish before the deadline")

    def _cancel_live(self, kind: str, why: str) -> bool:
        """Cancel the live batches not cancelled yet; one the provider will not cancel (it has
        ended) is not asked again, one it could not be asked about is asked again later."""
        todo = [
            b
            for b in self.store.batches(self.run_id, [BatchState.SUBMITTED])
            if b.id not in self._cancelled_late
        ]
        done = cancel_batches(self.store, self.provider, self.run_id, todo, why, kind)
        self._cancelled_late.update(d.batch.id for d in done if d.outcome != "failed")
        return any(d.outcome == "cancelled" for d in done)

    # submitting -----------------------------------------------------------------------------

    def _capacity(self, model: str) -> int | None:
        queue = self.settings.queue_tokens(model)
        learned = self.learned_capacity.get(model)
        if learned is not None:
            queue = learned if queue is None else min(queue, learned)
        return queue

    def _submit_more(self) -> bool:
        if time.monotonic() < self._backoff_until:
            return False
        progressed = False
        for batch in self.store.batches(self.run_id, TO_SUBMIT):
            progressed |= self._advance(batch)
            if time.monotonic() < self._backoff_until:
                return progressed
        while not self.interrupt.stop.is_set():
            batch_id = self._form_batch()
            if batch_id is None:
                break
            progressed = True
            self._advance(self.store.batch(self.run_id, batch_id))
            if time.monotonic() < self._backoff_until:
                break
        return progressed

    def _worst_cost(self, requests: list[PendingRequest] | PendingRequest) -> float:
        """The batch lane's reservation: the planned worst cases at the batch price."""
        items = requests if isinstance(requests, list) else [requests]
        return sum(reservation(r, self.settings.prices, batch=True) for r in items)

    def _hold(self) -> None:
        """Keep the share's count of money held by batches formed but not yet created, which
        the real-time lane must leave to them (lock held)."""
        if self.settings.budget_usd is None:
            return
        self.share.held_usd = sum(
            self._worst_cost(self.store.batch_requests(self.run_id, b.id, bodies=False))
            for b in self.store.batches(self.run_id, UNRESERVED)
        )

    def _form_batch(self) -> int | None:
        with self.share.lock:
            batch_id = self._choose_batch()
            self._hold()
            return batch_id

    def _choose_batch(self) -> int | None:
        """A new local batch from the front of the pending requests that batches may take, as
        large as the queue, the batch limits and the money allow (lock held)."""
        settings = self.settings
        room_requests = self.share.batch_room(self.store)
        first = self.store.pending(self.run_id, 1) if room_requests else []
        if not first:
            return None
        model, endpoint = first[0].model, first[0].endpoint
        live = [b for b in self.store.batches(self.run_id, LIVE) if b.model == model]
        capacity = self._capacity(model)
        room = None if capacity is None else capacity - sum(b.input_tokens for b in live)
        if live and room is not None and room < first[0].input_tokens:
            return None  # the queue is full: wait for capacity to come back
        pending = self.store.pending(self.run_id, min(settings.requests_per_batch, room_requests))
        per_batch = settings.tokens_per_batch(model)
        limit = per_batch if room is None else room if per_batch is None else min(per_batch, room)
        money_left = self.share.money_left(self.store)
        chosen: list[PendingRequest] = []
        size = tokens = 0
        cost = 0.0
        for request in pending:
            if request.model != model or request.endpoint != endpoint:
                continue
            line = len(request_line(request.id, endpoint, request.body)) + 1
            worst = self._worst_cost(request)
            if chosen and (size + line > settings.bytes_per_batch):
                break
            if limit is not None and tokens + request.input_tokens > limit:
                break
            if money_left is not None and cost + worst > money_left:
                break
            chosen.append(request)
            size, tokens, cost = size + line, tokens + request.input_tokens, cost + worst
        if chosen:
            return self.store.create_batch(
                self.run_id,
                chosen,
                size=size,
                file_name_prefix=f"batchpilot-{self.store.store_id}-{self.run_id}",
            )
        head = pending[0]
        if live or self.share.inflight_usd > 0:
            return None  # wait for capacity or money to come back
        if capacity is not None and head.input_tokens > capacity:
            self.store.fail_requests(
                self.run_id,
                [head.id],
                f"over_queue_limit: {head.input_tokens} input tokens exceed "
                f"the queue limit of {capacity}",
            )
            return None
        if money_left is not None:
            spent, _ = self.store.money(self.run_id)
            message = (
                f"the budget of {_usd(settings.budget_usd)} is used up: {_usd(spent)} spent, "
                f"{_usd(money_left)} left, and the next request may cost up to "
                f"{_usd(self._worst_cost(head))} (its worst case: every answer in full); "
                f"{self.store.request_counts(self.run_id)['pending']} requests are still pending. "
                "Raise budget.max_usd (or --budget) and run again"
            )
            self.store.event(self.run_id, "budget", message)
            self.store.set_run_status(self.run_id, "stopped")
            raise BudgetExceeded(message)
        return None

    def _advance(self, batch: BatchRecord) -> bool:
        """Take one batch as far along its submission as it goes now."""
        try:
            if batch.state == BatchState.PLANNED:
                self._write_file(batch)
                batch = self.store.move_batch(self.run_id, batch.id, BatchState.UPLOADING)
                self._fresh.add((batch.id, "upload"))
            if batch.state == BatchState.UPLOADING:
                batch = self._upload(batch)
            if batch.state == BatchState.UPLOADED:
                reserved = self._reserve(batch)
                if reserved is None:
                    return False
                batch = reserved
            if batch.state == BatchState.CREATING:
                self._create(batch)
            return True
        except ProviderUnavailable as exc:
            self._back_off(f"batch {batch.id}: {exc}")
            return False
        except AuthenticationFailed:
            raise  # not the batch's fault: the run stops (see run)
        except ProviderRejected as exc:
            self.store.event(self.run_id, "error", f"batch {batch.id} rejected: {exc}")
            requests = self.store.batch_requests(self.run_id, batch.id, bodies=False)
            with self.share.lock:
                self.store.move_batch(
                    self.run_id, batch.id, BatchState.ABANDONED, error=str(exc), reserved_usd=0.0
                )
                self.store.fail_requests(self.run_id, [r.id for r in requests], f"rejected: {exc}")
                self._hold()
            return True

    def _reserve(self, batch: BatchRecord) -> BatchRecord | None:
        """Reserve the batch's worst case and record the intent to create it; None while the
        money left (after the real-time lane's requests in flight) cannot cover it."""
        worst = self._worst_cost(self.store.batch_requests(self.run_id, batch.id, bodies=False))
        with self.share.lock:
            left = self.share.money_left(self.store)
            # this batch's own worst case is among the held money until it is reserved
            if left is not None and worst > left + self.share.held_usd:
                if not self._money_may_come_back(batch):
                    # The budget was lowered (or prices raised) since the batch was formed, and
                    # no other spending will end to free money: the batch's requests go back to
                    # be packed again within what is left, or to stop the run for the budget.
                    self.store.event(
                        self.run_id,
                        "budget",
                        f"batch {batch.id} no longer fits the budget ({_usd(worst)} at worst, "
                        f"{_usd(left + self.share.held_usd)} left); its requests are packed again",
                    )
                    self.store.move_batch(self.run_id, batch.id, BatchState.ABANDONED)
                    self._hold()
                return None
            moved = self.store.move_batch(
                self.run_id, batch.id, BatchState.CREATING, reserved_usd=worst
            )
            self._hold()
        self._fresh.add((batch.id, "create"))
        return moved

    def _reservation_holds(self) -> bool:
        """Whether what is spent and reserved still fits the budget (it may have been lowered)."""
        with self.share.lock:
            left = self.share.money_left(self.store)
        return left is None or left >= -1e-12

    def _money_may_come_back(self, batch: BatchRecord) -> bool:
        """Whether spending now under way (another live batch, real-time requests in flight) may
        still end and leave money for `batch`."""
        live = self.store.batches(self.run_id, (BatchState.CREATING, BatchState.SUBMITTED))
        return any(b.id != batch.id for b in live) or self.share.inflight_usd > 0

    def _back_off(self, message: str) -> None:
        delay = min(self.settings.max_poll_interval_s, max(1.0, self.settings.poll_interval_s))
        self._backoff_until = time.monotonic() + delay * random.uniform(0.75, 1.25)
        self.store.event(self.run_id, "retry", f"{message}; retrying in {delay:.0f}s")

    def _file_path(self, batch: BatchRecord) -> Path:
        return self.files_dir / batch.file_name

    def _write_file(self, batch: BatchRecord) -> Path:
        path = self._file_path(batch)
        tmp = path.with_suffix(".part")
        with tmp.open("wb") as handle:
            for request in self.store.batch_requests(self.run_id, batch.id):
                handle.write(request_line(request.id, request.endpoint, request.body))
                handle.write(b"\n")
        tmp.replace(path)
        return path

    def _upload(self, batch: BatchRecord) -> BatchRecord:
        # Only the first try of an intent made by this process may skip the listing: once a
        # try has failed, the provider may hold the file although we never saw its answer.
        fresh = (batch.id, "upload") in self._fresh
        self._fresh.discard((batch.id, "upload"))
        if not fresh:
            found = find_upload(self.provider, batch, self.store.store_id)
            if found is not None:
                self.store.event(self.run_id, "adopted", f"batch {batch.id}: found {found}")
                return self.store.move_batch(
                    self.run_id, batch.id, BatchState.UPLOADED, input_file_id=found
                )
        path = self._file_path(batch)
        if not path.is_file():
            self._write_file(batch)
        staged = self.provider.batches.stage(path, tags_for(batch, self.store.store_id))
        return self.store.move_batch(
            self.run_id, batch.id, BatchState.UPLOADED, input_file_id=staged
        )

    def _create(self, batch: BatchRecord) -> BatchRecord:
        remote: RemoteBatch | None = None
        # As for uploads: a create whose answer was lost (timeout, 5xx) may have created the
        # batch, so every try but the very first looks for it before creating it again.
        fresh = (batch.id, "create") in self._fresh
        self._fresh.discard((batch.id, "create"))
        if not fresh:
            remote = self._find_remote(batch)
            if remote is not None:
                self.store.event(self.run_id, "adopted", f"batch {batch.id}: found {remote.id}")
        if remote is None and not fresh and not self._reservation_holds():
            # Never created, and the budget was lowered since its worst case was reserved: the
            # reservation is taken again under today's budget before anything is sent.
            self.store.event(
                self.run_id, "budget", f"batch {batch.id}: its reservation is taken again"
            )
            with self.share.lock:
                moved = self.store.move_batch(
                    self.run_id, batch.id, BatchState.UPLOADED, reserved_usd=0.0
                )
                self._hold()
            return moved
        if remote is None:
            path = self._file_path(batch)
            if batch.input_file_id is None and not path.is_file():
                self._write_file(batch)  # requests that go inline are read from it again
            tags = tags_for(batch, self.store.store_id)
            remote = self.provider.batches.submit(
                path, batch.endpoint, tags, staged=batch.input_file_id
            )
        return self._submitted(batch, remote)

    def _submitted(self, batch: BatchRecord, remote: RemoteBatch) -> BatchRecord:
        self._polls[batch.id] = _Poll(0.0, self.settings.poll_interval_s)
        return record_submitted(self.store, self.run_id, batch, remote)

    def _find_remote(self, batch: BatchRecord) -> RemoteBatch | None:
        return find_batch(self.provider, batch, self.run_id, self.store.store_id)

    # polling and ingesting ------------------------------------------------------------------

    def _poll_live(self) -> bool:
        progressed = False
        now = time.monotonic()
        live = self.store.batches(self.run_id, [BatchState.SUBMITTED])
        turnaround = self._turnaround() if live else 0.0
        for batch in live:
            poll = self._polls.setdefault(batch.id, _Poll(0.0, self.settings.poll_interval_s))
            if poll.due > now or batch.remote_id is None:
                continue
            try:
                remote = self.provider.batches.poll(batch.remote_id)
            except RemoteNotFound:
                misses = batch.not_found + 1
                self.store.update_batch(self.run_id, batch.id, not_found=misses)
                listed = None
                if misses % self.settings.not_found_grace == 0:
                    listed = self._find_lost(batch, misses)
                if listed is None:
                    self._schedule(poll, batch, turnaround)
                    continue
                remote = listed
            except ProviderUnavailable as exc:
                self.store.event(self.run_id, "retry", f"polling batch {batch.id}: {exc}")
                self._schedule(poll, batch, turnaround)
                continue
            changed = remote.status.value != batch.remote_status
            self.store.update_batch(
                self.run_id,
                batch.id,
                remote_status=remote.status.value,
                completed=remote.completed,
                failed=remote.failed,
            )
            if remote.status.terminal:
                try:
                    self._ingest(batch, remote)
                except ProviderUnavailable as exc:
                    self.store.event(self.run_id, "retry", f"downloading batch {batch.id}: {exc}")
                    self._schedule(poll, batch, turnaround)
                    continue
                self._polls.pop(batch.id, None)
                progressed = True
            else:
                if changed:
                    poll.interval = self.settings.poll_interval_s
                self._schedule(poll, batch, turnaround)
        return progressed

    def _find_lost(self, batch: BatchRecord, misses: int) -> RemoteBatch | None:
        """A batch that keeps answering 404: look it up in the listing (with proof that it is
        ours) and go on from what the listing says of it; else say so."""
        try:
            found = self._find_remote(batch)
        except ProviderUnavailable:
            return None
        if found is not None and found.id != batch.remote_id:
            self.store.update_batch(self.run_id, batch.id, remote_id=found.id, not_found=0)
            self.store.event(self.run_id, "adopted", f"batch {batch.id} is {found.id}")
            return found
        if found is not None:
            self.store.event(
                self.run_id,
                "warning",
                f"batch {batch.id} ({batch.remote_id}) answered 'not found' {misses} times but "
                f"is in the provider's listing ({found.status.value}); following it there",
            )
            return found
        if self._past_window(batch):
            self._lost(batch, misses)
            return None
        self.store.event(
            self.run_id,
            "warning",
            f"batch {batch.id} ({batch.remote_id}) answered 'not found' {misses} times and is not "
            "in the provider's listing; still polling. `batchpilot cancel` stops the run.",
        )
        return None

    def _past_window(self, batch: BatchRecord) -> bool:
        """Whether the batch's completion window (and an hour more) has passed."""
        if not batch.submitted_at_utc:
            return False
        elapsed = (datetime.now(UTC) - _utc(batch.submitted_at_utc)).total_seconds()
        return elapsed * self.settings.time_scale > COMPLETION_WINDOW_S + 3600

    def _lost(self, batch: BatchRecord, misses: int) -> None:
        """A batch the provider does not know, does not list, and whose window has ended can
        bring nothing any more: its requests go back to pending (each try counted)."""
        requests = self.store.batch_requests(self.run_id, batch.id, bodies=False)
        why = f"lost: the provider no longer knows batch {batch.remote_id}"
        outcomes = [
            Outcome(r.id, self.settings.retry.next_state(r, True, True), error=why)
            for r in requests
        ]
        self.store.finish_batch(self.run_id, batch.id, outcomes)
        self._polls.pop(batch.id, None)
        self.store.event(
            self.run_id,
            "lost",
            f"batch {batch.id} ({batch.remote_id}) is gone: 'not found' {misses} times, not in "
            "the provider's listing, and its completion window has ended; its requests are "
            "sent again",
        )

    def _schedule(self, poll: _Poll, batch: BatchRecord, turnaround: float) -> None:
        poll.interval = min(self._poll_cap(batch, turnaround), max(poll.interval, 0.01) * 1.5)
        poll.due = time.monotonic() + poll.interval * random.uniform(0.8, 1.2)

    def _poll_cap(self, batch: BatchRecord, turnaround: float) -> float:
        """The longest wait between two polls of `batch`: a quarter of the time it may still
        take (the turnaround, learned or estimated, and the deadline), a twentieth of the
        turnaround once it is late; never below the poll interval nor above the maximum."""
        settings = self.settings
        now = datetime.now(UTC)
        turnaround /= settings.time_scale
        left = turnaround
        if batch.submitted_at_utc:
            left -= (now - _utc(batch.submitted_at_utc)).total_seconds()
        if settings.deadline is not None:
            left = min(left, (settings.deadline - now).total_seconds())
        cap = left / 4 if left > 0 else turnaround / 20
        return min(settings.max_poll_interval_s, max(settings.poll_interval_s, cap))

    def _download(self, remote: RemoteBatch) -> list[Path]:
        return self.provider.batches.results(remote, self.files_dir)

    def _cost(self, request: PendingRequest, body: dict[str, Any]) -> tuple[int, int, float]:
        return usage_cost(self.settings.prices, request.model, body, batch=True)

    def _ingest(self, batch: BatchRecord, remote: RemoteBatch) -> None:
        requests = self.store.batch_requests(self.run_id, batch.id, bodies=False)
        if remote.status == RemoteStatus.FAILED:
            outcomes = self._failed_batch(batch, remote, requests)
        else:
            outcomes = classify(
                requests,
                read_lines(self._download(remote)),
                self.settings.retry,
                self._cost,
                check=self.check,
                missing_ran=not (
                    batch.id in self._cancelled_late and remote.status == RemoteStatus.CANCELLED
                ),
                unread_cost=self._worst_cost,
            )
        self.store.finish_batch(
            self.run_id,
            batch.id,
            outcomes,
            output_file_id=remote.result_ids[0],
            error_file_id=remote.result_ids[1],
        )
        done = sum(o.state == RequestState.SUCCEEDED for o in outcomes)
        self.store.event(
            self.run_id,
            "ingested",
            f"batch {batch.id} {remote.status.value}: {done} of {len(outcomes)} answered",
        )

    def _failed_batch(
        self, batch: BatchRecord, remote: RemoteBatch, requests: list[PendingRequest]
    ) -> list[Outcome]:
        codes = {str(e.get("code")) for e in remote.errors}
        message = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in remote.errors[:3])
        if "token_limit_exceeded" in codes:
            others = sum(
                b.input_tokens
                for b in self.store.batches(self.run_id, LIVE)
                if b.model == batch.model and b.id != batch.id
            )
            learned = (
                int((others + batch.input_tokens) * 0.9)
                if others
                else int(batch.input_tokens * 0.8)
            )
            # The limit does not move: a later failure (whose "others" may count batches that
            # were refused too) must never raise what an earlier one taught.
            known = self.learned_capacity.get(batch.model)
            learned = max(1, learned if known is None else min(known, learned))
            self.learned_capacity[batch.model] = learned
            self.store.event(
                self.run_id,
                "queue_limit",
                f"batch {batch.id} hit the enqueued-token limit; now keeping "
                f"{learned:,} tokens in the queue for {batch.model}",
            )
            return [
                Outcome(r.id, RequestState.PENDING, error=message, attempted=False)
                for r in requests
            ]
        by_line = {index + 1: request for index, request in enumerate(requests)}
        bad = {
            by_line[int(e["line"])].id: f"{e.get('code')}: {e.get('message')}"
            for e in remote.errors
            if isinstance(e.get("line"), int) and e["line"] in by_line
        }
        outcomes = []
        for request in requests:
            if request.id in bad:
                outcomes.append(Outcome(request.id, RequestState.FAILED, error=bad[request.id]))
            else:
                state = self.settings.retry.next_state(request, True, True)
                outcomes.append(Outcome(request.id, state, error=f"batch failed: {message}"))
        return outcomes


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _seconds_between(start: str, end: str) -> float:
    return (_utc(end) - _utc(start)).total_seconds()
