"""The batch lane: submit within the queue and money budgets, poll, ingest, retry, finish.

Exactly once: before every remote side effect (upload, batch creation) an intent is committed;
every remote object carries the run id and local batch id (file name, batch metadata); on every
start, and before repeating an intent, the provider's listing is searched and what is found is
adopted instead of being created again.
"""

from __future__ import annotations

import asyncio
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
from batchpilot.lanes.realtime import LaneReport, RealtimeLane, recover_inflight
from batchpilot.plan.ids import request_line
from batchpilot.plan.strategies import StrategyInputs, estimate_strategies
from batchpilot.providers.base import (
    AuthenticationFailed,
    Provider,
    RemoteBatch,
    RemoteNotFound,
    RemoteStatus,
)
from batchpilot.run.ingest import classify, read_lines
from batchpilot.run.settings import RunSettings
from batchpilot.run.status import RunStatus, run_status
from batchpilot.run.target import TargetCounter
from batchpilot.store import (
    BatchRecord,
    BatchState,
    Outcome,
    PendingRequest,
    RequestState,
    SQLiteStore,
    utc_now,
)

__all__ = ["Interrupt", "Runner", "metadata_for"]

log = logging.getLogger(__name__)

LIVE = (BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING, BatchState.SUBMITTED)
TO_SUBMIT = (BatchState.PLANNED, BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING)


def _usd(amount: float | None) -> str:
    """Dollars readable at any size: $25.00, but $0.000631 rather than $0.00."""
    if amount is None:
        return "no limit"
    if abs(amount) >= 0.1 or amount == 0:
        return f"${amount:,.2f}"
    return f"${amount:.{2 - math.floor(math.log10(abs(amount)))}f}"  # three significant digits


def metadata_for(run_id: str, batch_id: int) -> dict[str, str]:
    return {"batchpilot_run": run_id, "batchpilot_batch": str(batch_id)}


class Interrupt:
    """Ctrl-C handling: the first finishes the current step and stops; the second also cancels
    the remote batches."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.cancel = threading.Event()
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.cancel.set()
        self.stop.set()

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
    store: SQLiteStore
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
    _events: asyncio.AbstractEventLoop | None = None
    _quota: int | None = None
    _cancelled_late: set[int] = field(default_factory=set)
    _ended: int = 0
    target: TargetCounter | None = None
    """Target mode: once met, nothing more is sent and live batches are cancelled."""
    _goal_met: bool = False

    # the loop -------------------------------------------------------------------------------

    def run(self) -> RunStatus:
        """Drive the run until every request has ended, or until stopped or detached."""
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.store.set_run_status(self.run_id, "running")
        cached = self.store.apply_cache(self.run_id) if self.use_cache else 0
        if cached:
            self.store.event(self.run_id, "cache", f"{cached} requests answered from the cache")
        recovered = recover_inflight(self.store, self.run_id)
        if recovered:
            self.store.event(
                self.run_id,
                "recovered",
                f"{recovered} real-time requests were in flight at a crash",
            )
        try:
            return self._loop()
        except AuthenticationFailed as exc:
            # The key, not a batch, is wrong: stop with every intent kept, so that a run with
            # the right key continues instead of finding its requests failed for good.
            self.store.event(self.run_id, "error", str(exc))
            self.store.set_run_status(self.run_id, "stopped")
            raise
        finally:
            if self._events is not None:
                if self.lane is not None:
                    self._events.run_until_complete(self.lane.client.close())
                self._events.close()
                self._events = None

    def _loop(self) -> RunStatus:
        while True:
            if self.interrupt.stop.is_set():
                return self._stop()
            progressed = self._poll_live()
            if self.interrupt.stop.is_set():
                pass
            elif self._goal_reached():
                progressed |= self._wind_down()
            else:
                progressed |= self._dispatch()
            status = self.status()
            if self.on_progress is not None:
                self.on_progress(status)
            if status.finished:
                self.store.set_run_status(self.run_id, "finished")
                self.store.event(self.run_id, "finished", "every request has ended")
                return self.status()
            if self.settings.detach and not self.store.batches(self.run_id, TO_SUBMIT):
                self.store.event(self.run_id, "detached", "submitted; not waiting")
                return status
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
        """After the target is met: batches not yet sent are dropped, batches whose creation
        may have happened are finished as usual, live ones are cancelled (what they answered
        is kept: it is paid for); once none is live, what is still pending is cancelled."""
        progressed = False
        for batch in self.store.batches(self.run_id, TO_SUBMIT):
            if batch.state == BatchState.CREATING:
                progressed |= self._advance(batch)
            else:
                self.store.move_batch(self.run_id, batch.id, BatchState.ABANDONED)
                progressed = True
        progressed |= self._cancel_live("target", "cancelled: no longer needed")
        if not self.store.batches(self.run_id, LIVE):
            reason = "not_needed: the target was met before it was sent"
            progressed |= self.store.cancel_pending(self.run_id, reason) > 0
        return progressed

    def status(self) -> RunStatus:
        status = run_status(self.store, self.run_id, self.settings.budget_usd)
        if self.target is not None:
            status.target, status.valid = self.target.goal, self.target.count()
        return status

    def _sleep(self) -> None:
        now = time.monotonic()
        dues = [poll.due for poll in self._polls.values()] + [self._backoff_until]
        wait = min([due - now for due in dues if due > now], default=self.settings.poll_interval_s)
        self.interrupt.stop.wait(max(0.01, min(wait, self.settings.poll_interval_s)))

    def _stop(self) -> RunStatus:
        live = self.store.batches(self.run_id, [BatchState.SUBMITTED])
        if self.settings.cancel_on_exit or self.interrupt.cancel.is_set():
            for batch in live:
                if batch.remote_id is not None:
                    try:
                        self.provider.cancel_batch(batch.remote_id)
                    except (ProviderRejected, ProviderUnavailable) as exc:
                        self.store.event(self.run_id, "warning", f"cancel failed: {exc}")
            self.store.event(self.run_id, "cancelled", f"cancelled {len(live)} remote batches")
        else:
            self.store.event(
                self.run_id, "stopped", f"stopped with {len(live)} batches still running remotely"
            )
        self.store.set_run_status(self.run_id, "stopped")
        return self.status()

    # choosing a lane -------------------------------------------------------------------------

    def _dispatch(self) -> bool:
        strategy = self.settings.strategy
        if strategy == "batch":
            return self._submit_more()
        chunk = max(8, (self.settings.realtime.rpm or 600) // 6)
        if strategy == "realtime":
            return self._realtime(self.store.pending(self.run_id, chunk))
        progressed = False
        if self._deadline_near():
            progressed |= self._cancel_late_batches()
            return self._realtime(self.store.pending(self.run_id, chunk)) or progressed
        pending, _, _ = self.store.pending_totals(self.run_id)
        quota = self._realtime_quota()
        if quota > 0 and pending:
            # A slice of time for the real-time lane, so that batches are still polled and
            # submitted while it waits for its rate limits; unsent requests go back to pending.
            taken = self.store.pending(self.run_id, min(chunk, quota), from_end=True)
            progressed |= self._realtime(taken, max(0.25, 5 * self.settings.poll_interval_s))
            self._quota = quota - self._ended
        elif 0 < pending <= self.settings.tail_requests and self.store.batches(self.run_id):
            # a small tail left after the bulk went in batches: sooner in real time
            progressed |= self._realtime(self.store.pending(self.run_id, chunk))
        return self._submit_more() or progressed

    def _realtime_quota(self) -> int:
        """How many requests the hybrid sends in real time, chosen once from the estimates."""
        if self._quota is None:
            count, tokens, most_out = self.store.pending_totals(self.run_id)
            first = self.store.pending(self.run_id, 1)
            queue = self._capacity(first[0].model) if first else None
            limits = self.settings.realtime
            inputs = StrategyInputs(
                count,
                tokens,
                most_out // 2,
                None,
                None,
                queue,
                limits.rpm,
                limits.tpm,
                limits.rpd,
                self._turnaround(),
            )
            self._quota = estimate_strategies(inputs)["hybrid"].realtime_requests
            self.store.event(
                self.run_id, "hybrid", f"{self._quota} of {count} requests go real time"
            )
        return self._quota

    def _turnaround(self) -> float:
        """Seconds a batch takes: the median of this run's finished batches, else the setting."""
        spans = sorted(
            _seconds_between(b.submitted_at_utc, b.finished_at_utc)
            for b in self.store.batches(self.run_id, [BatchState.FINISHED])
            if b.submitted_at_utc and b.finished_at_utc
        )
        return spans[len(spans) // 2] if spans else self.settings.turnaround_s

    def _deadline_near(self) -> bool:
        deadline = self.settings.deadline
        if deadline is None:
            return False
        return datetime.now(UTC) + timedelta(seconds=self._turnaround()) > deadline

    def _cancel_late_batches(self) -> bool:
        """Batches that cannot finish by the deadline are cancelled; what they did not run comes
        back as pending once their partial results are ingested, and then goes real time."""
        return self._cancel_live("deadline", "cancelled to finish before the deadline")

    def _cancel_live(self, kind: str, why: str) -> bool:
        cancelled = False
        for batch in self.store.batches(self.run_id, [BatchState.SUBMITTED]):
            if batch.id in self._cancelled_late or batch.remote_id is None:
                continue
            try:
                self.provider.cancel_batch(batch.remote_id)
            except (ProviderRejected, ProviderUnavailable) as exc:
                self.store.event(self.run_id, "warning", f"cancel of batch {batch.id}: {exc}")
                continue
            self._cancelled_late.add(batch.id)
            self.store.event(self.run_id, kind, f"batch {batch.id} {why}")
            cancelled = True
        return cancelled

    def _realtime(self, requests: list[PendingRequest], slice_s: float | None = None) -> bool:
        self._ended = 0
        if not requests:
            return False
        if self.lane is None:
            raise UserInputError(f"strategy {self.settings.strategy} needs a real-time client")
        if self._events is None:
            self._events = asyncio.new_event_loop()
        report = self._events.run_until_complete(self._lane_run(self.lane, requests, slice_s))
        self._ended = report.succeeded + report.failed
        self.store.event(
            self.run_id,
            "realtime",
            f"{report.succeeded} answered, {report.failed} failed, {report.retried} retried "
            "in real time",
        )
        if report.budget_stopped and not self.store.batches(self.run_id, LIVE):
            spent, _ = self.store.money(self.run_id)
            self.store.set_run_status(self.run_id, "stopped")
            raise BudgetExceeded(
                f"the budget of ${self.settings.budget_usd} is used up (${spent:.4f} spent); "
                "raise budget.max_usd (or --budget) and run again"
            )
        return report.succeeded + report.failed + report.retried > 0

    async def _lane_run(
        self, lane: RealtimeLane, requests: list[PendingRequest], slice_s: float | None
    ) -> LaneReport:
        stop = asyncio.Event()
        until = None if slice_s is None else time.monotonic() + slice_s

        async def watch() -> None:
            while not self.interrupt.stop.is_set():
                if until is not None and time.monotonic() >= until:
                    break
                await asyncio.sleep(0.02)
            stop.set()

        watcher = asyncio.ensure_future(watch())
        try:
            return await lane.run(requests, stop)
        finally:
            watcher.cancel()

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
        prices = self.settings.prices
        items = requests if isinstance(requests, list) else [requests]
        if prices is None or not items or not prices.has(items[0].model):
            return 0.0
        return prices.cost(
            items[0].model,
            input_tokens=sum(r.input_tokens for r in items),
            output_tokens=sum(r.max_output_tokens for r in items),
            batch=True,
        )

    def _form_batch(self) -> int | None:
        settings = self.settings
        pending = self.store.pending(self.run_id, settings.requests_per_batch)
        if not pending:
            return None
        model, endpoint = pending[0].model, pending[0].endpoint
        enqueued = sum(
            b.input_tokens for b in self.store.batches(self.run_id, LIVE) if b.model == model
        )
        capacity = self._capacity(model)
        room = None if capacity is None else capacity - enqueued
        per_batch = settings.tokens_per_batch(model)
        limit = per_batch if room is None else room if per_batch is None else min(per_batch, room)
        spent, reserved = self.store.money(self.run_id)
        money_left = None if settings.budget_usd is None else settings.budget_usd - spent - reserved
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
                self.run_id, chosen, size=size, file_name_prefix=f"batchpilot-{self.run_id}"
            )
        live = self.store.batches(self.run_id, LIVE)
        first = pending[0]
        if live:
            return None  # wait for capacity or money to come back
        if capacity is not None and first.input_tokens > capacity:
            self.store.fail_requests(
                self.run_id,
                [first.id],
                f"over_queue_limit: {first.input_tokens} input tokens exceed "
                f"the queue limit of {capacity}",
            )
            return None
        if money_left is not None:
            message = (
                f"the budget of {_usd(settings.budget_usd)} is used up: {_usd(spent)} spent, "
                f"{_usd(money_left)} left, and the next request may cost up to "
                f"{_usd(self._worst_cost(first))} (its max_tokens answered in full); "
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
                worst = self._worst_cost(
                    self.store.batch_requests(self.run_id, batch.id, bodies=False)
                )
                spent, reserved = self.store.money(self.run_id)
                budget = self.settings.budget_usd
                if budget is not None and spent + reserved + worst > budget:
                    return False
                batch = self.store.move_batch(
                    self.run_id, batch.id, BatchState.CREATING, reserved_usd=worst
                )
                self._fresh.add((batch.id, "create"))
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
            self.store.move_batch(
                self.run_id, batch.id, BatchState.ABANDONED, error=str(exc), reserved_usd=0.0
            )
            self.store.fail_requests(self.run_id, [r.id for r in requests], f"rejected: {exc}")
            return True

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
            found = next(
                (f for f in self.provider.list_files() if f.filename == batch.file_name), None
            )
            if found is not None:
                self.store.event(self.run_id, "adopted", f"batch {batch.id}: found {found.id}")
                return self.store.move_batch(
                    self.run_id, batch.id, BatchState.UPLOADED, input_file_id=found.id
                )
        path = self._file_path(batch)
        if not path.is_file():
            self._write_file(batch)
        remote = self.provider.upload(path, batch.file_name)
        return self.store.move_batch(
            self.run_id, batch.id, BatchState.UPLOADED, input_file_id=remote.id
        )

    def _create(self, batch: BatchRecord) -> BatchRecord:
        tags = metadata_for(self.run_id, batch.id)
        remote: RemoteBatch | None = None
        # As for uploads: a create whose answer was lost (timeout, 5xx) may have created the
        # batch, so every try but the very first looks for it before creating it again.
        fresh = (batch.id, "create") in self._fresh
        self._fresh.discard((batch.id, "create"))
        if not fresh:
            remote = next(
                (
                    b
                    for b in self.provider.list_batches()
                    if all(b.metadata.get(k) == v for k, v in tags.items())
                ),
                None,
            )
            if remote is not None:
                self.store.event(self.run_id, "adopted", f"batch {batch.id}: found {remote.id}")
        if remote is None:
            assert batch.input_file_id is not None
            remote = self.provider.create_batch(batch.input_file_id, batch.endpoint, tags)
        self.store.event(
            self.run_id, "submitted", f"batch {batch.id} ({batch.requests} requests) is {remote.id}"
        )
        self._polls[batch.id] = _Poll(0.0, self.settings.poll_interval_s)
        return self.store.move_batch(
            self.run_id,
            batch.id,
            BatchState.SUBMITTED,
            remote_id=remote.id,
            remote_status=remote.status.value,
            submitted_at_utc=utc_now(),
        )

    # polling and ingesting ------------------------------------------------------------------

    def _poll_live(self) -> bool:
        progressed = False
        now = time.monotonic()
        for batch in self.store.batches(self.run_id, [BatchState.SUBMITTED]):
            poll = self._polls.setdefault(batch.id, _Poll(0.0, self.settings.poll_interval_s))
            if poll.due > now or batch.remote_id is None:
                continue
            try:
                remote = self.provider.get_batch(batch.remote_id)
            except RemoteNotFound:
                misses = batch.not_found + 1
                self.store.update_batch(self.run_id, batch.id, not_found=misses)
                if misses % self.settings.not_found_grace == 0:
                    self._find_lost(batch, misses)
                self._schedule(poll)
                continue
            except ProviderUnavailable as exc:
                self.store.event(self.run_id, "retry", f"polling batch {batch.id}: {exc}")
                self._schedule(poll)
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
                    self._schedule(poll)
                    continue
                self._polls.pop(batch.id, None)
                progressed = True
            else:
                if changed:
                    poll.interval = self.settings.poll_interval_s
                self._schedule(poll)
        return progressed

    def _find_lost(self, batch: BatchRecord, misses: int) -> None:
        """A batch that keeps answering 404: look it up by its tags, and say so."""
        tags = metadata_for(self.run_id, batch.id)
        try:
            found = next(
                (
                    b
                    for b in self.provider.list_batches()
                    if all(b.metadata.get(k) == v for k, v in tags.items())
                ),
                None,
            )
        except ProviderUnavailable:
            return
        if found is not None and found.id != batch.remote_id:
            self.store.update_batch(self.run_id, batch.id, remote_id=found.id, not_found=0)
            self.store.event(self.run_id, "adopted", f"batch {batch.id} is {found.id}")
            return
        self.store.event(
            self.run_id,
            "warning",
            f"batch {batch.id} ({batch.remote_id}) answered 'not found' {misses} times and is not "
            "in the provider's listing; still polling. `batchpilot cancel` stops the run.",
        )

    def _schedule(self, poll: _Poll) -> None:
        poll.interval = min(self.settings.max_poll_interval_s, max(poll.interval, 0.01) * 1.5)
        poll.due = time.monotonic() + poll.interval * random.uniform(0.8, 1.2)

    def _download(self, file_id: str | None, name: str) -> Path | None:
        if file_id is None:
            return None
        target = self.files_dir / name
        if not target.is_file():
            self.provider.download(file_id, target)
        return target

    def _cost(self, request: PendingRequest, body: dict[str, Any]) -> tuple[int, int, float]:
        usage = body.get("usage") or {}
        prompt = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
        completion = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = min(prompt, int(details.get("cached_tokens", 0) or 0))
        prices = self.settings.prices
        if prices is None or not prices.has(request.model):
            return prompt, completion, 0.0
        usd = prices.cost(
            request.model,
            input_tokens=prompt,
            output_tokens=completion,
            cached_tokens=cached,
            batch=True,
        )
        return prompt, completion, usd

    def _ingest(self, batch: BatchRecord, remote: RemoteBatch) -> None:
        requests = self.store.batch_requests(self.run_id, batch.id, bodies=False)
        if remote.status == RemoteStatus.FAILED:
            outcomes = self._failed_batch(batch, remote, requests)
        else:
            output = self._download(remote.output_file_id, f"{batch.file_name}.output")
            errors = self._download(remote.error_file_id, f"{batch.file_name}.errors")
            outcomes = classify(
                requests,
                read_lines([output, errors]),
                self.settings.retry,
                self._cost,
                check=self.check,
                missing_ran=not (
                    batch.id in self._cancelled_late and remote.status == RemoteStatus.CANCELLED
                ),
            )
        self.store.finish_batch(
            self.run_id,
            batch.id,
            outcomes,
            output_file_id=remote.output_file_id,
            error_file_id=remote.error_file_id,
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


def _seconds_between(start: str, end: str) -> float:
    first = datetime.fromisoformat(start.replace("Z", "+00:00"))
    return (datetime.fromisoformat(end.replace("Z", "+00:00")) - first).total_seconds()
