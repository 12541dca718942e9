"""The batch lane: form batches within the queue and money budgets, upload and create them,
poll, download and ingest what they answered.

Exactly once: before every remote side effect (upload, batch creation) an intent is committed;
every remote object carries the run id and local batch id (file name, batch metadata); on every
start, and before repeating an intent, the provider's listing is searched and what is found is
adopted instead of being created again.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchpilot.errors import ProviderRejected, ProviderUnavailable
from batchpilot.formatting import usd
from batchpilot.lanes.failed import failed_batch_outcomes, lose_batch
from batchpilot.lanes.forming import owned, pending_pages, write_batch_file
from batchpilot.lanes.shared_queue import hold, shared_full, shared_room
from batchpilot.plan.ids import request_line
from batchpilot.plan.packing import BatchLimits, Piece, Room, pack_next
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
from batchpilot.run.budget import OutOfMoney, stop_for_budget
from batchpilot.run.cancel import cancel_batches
from batchpilot.run.config import AnswerCheck, RunConfig
from batchpilot.run.ingest import classify, collector_paused, read_lines
from batchpilot.run.scheduler import LIVE, Scheduler, utc
from batchpilot.run.settings import RunSettings
from batchpilot.run.share import LaneShare
from batchpilot.store import BatchRecord, BatchState, PendingRequest, RequestState, Store

__all__ = ["TO_SUBMIT", "BatchLane"]

TO_SUBMIT = (BatchState.PLANNED, BatchState.UPLOADING, BatchState.UPLOADED, BatchState.CREATING)
UNRESERVED = (BatchState.PLANNED, BatchState.UPLOADING, BatchState.UPLOADED)
COMPLETION_WINDOW_S = 24 * 3600.0  # the window every batch is created with


@dataclass
class _Poll:
    due: float = 0.0
    interval: float = 0.0


class BatchLane:
    """One run's batches, from forming them to ingesting their answers.

    The money this lane holds (batches formed but not yet created) and the pending requests it
    takes are counted in `share`, under its lock, against the real-time lane's."""

    def __init__(
        self,
        store: Store,
        provider: Provider,
        config: RunConfig,
        share: LaneShare,
        scheduler: Scheduler,
        stop: threading.Event,
    ) -> None:
        self.store = store
        self.provider = provider
        self.config = config
        self.share = share
        self.scheduler = scheduler
        self.stop = stop
        self._polls: dict[int, _Poll] = {}
        self._fresh: set[tuple[int, str]] = set()
        self._backoff_until = 0.0
        self._cancelled_late: set[int] = set()
        self._worst: dict[int, float] = {}  # worst cases of the batches formed, by batch id
        self.on_step: Callable[[], None] | None = None  # told of uploads, submissions, collections

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def settings(self) -> RunSettings:
        return self.config.settings

    @property
    def check(self) -> AnswerCheck | None:
        return self.config.check

    def polled(self) -> int:
        """How many live batches the lane polls (known without reading the store)."""
        return len(self._polls)

    def dues(self) -> list[float]:
        """When (monotonic time) the lane next has something to do: a poll, a retry."""
        return [poll.due for poll in self._polls.values()] + [self._backoff_until]

    def mine(self, states: tuple[str, ...] | list[str]) -> list[BatchRecord]:
        """The run's batches in `states` this lane drives: with co-drivers, those it owns."""
        return owned(self.store.batches(self.run_id, states), self.config.worker)

    def cancel_all(self, why: str) -> None:
        """Cancel every live batch (the run stops and is not to leave them running)."""
        live = self.mine([BatchState.SUBMITTED])
        done = cancel_batches(self.store, self.provider, self.run_id, live, why)
        count = sum(d.outcome == "cancelled" for d in done)
        self.store.event(
            self.run_id, "cancelled", f"cancelled {count} of {len(live)} remote batches"
        )

    # submitting -----------------------------------------------------------------------------

    def submit_more(self) -> bool:
        if time.monotonic() < self._backoff_until:
            return False
        progressed = False
        for batch in self.mine(TO_SUBMIT):
            progressed |= self._advance(batch)
            if time.monotonic() < self._backoff_until:
                return progressed
        while not self.stop.is_set():
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
        held = {b.id: self._batch_worst(b.id) for b in self.mine(UNRESERVED)}
        self._worst = held
        self.share.held_usd = sum(held.values())

    def _batch_worst(self, batch_id: int) -> float:
        """A batch's worst case, read from its requests once (its members never change)."""
        if batch_id not in self._worst:
            requests = self.store.batch_requests(self.run_id, batch_id, bodies=False)
            self._worst[batch_id] = self._worst_cost(requests)
        return self._worst[batch_id]

    def _form_batch(self) -> int | None:
        """In one transaction: the account's shared queue limit stays locked until it holds."""
        try:
            with self.share.lock, self.store.tx():
                self._lock_run()
                batch_id = self._choose_batch()
                self._hold()
                return batch_id
        except OutOfMoney as short:  # the run stops in a transaction of its own
            budget = self.settings.budget_usd
            raise stop_for_budget(
                self.store, self.run_id, budget, left=short.left, next_worst=short.next_worst
            ) from None

    def _choose_batch(self) -> int | None:
        """A new local batch from the front of the pending requests that batches may take,
        packed by the plan's packer as large as the batch limits, the queue and the money
        allow (lock held)."""
        settings = self.settings
        room_requests = self.share.batch_room(self.store)
        first = self.store.pending(self.run_id, 1, bodies=False) if room_requests else []
        if not first:
            return None
        model, endpoint = first[0].model, first[0].endpoint
        live = [b for b in self.store.batches(self.run_id, LIVE) if b.model == model]
        capacity = self.scheduler.capacity(model)
        room = None if capacity is None else capacity - sum(b.input_tokens for b in live)
        if live and room is not None and room < first[0].input_tokens:
            return None  # the queue is full: wait for capacity to come back
        room = shared_room(self.store, self.config.account, model, room)
        money_left = self.share.money_left(self.store)
        same: list[PendingRequest] = []

        def pieces() -> Iterator[Piece]:
            # read page by page as the packer takes them: it stops one past a full batch
            limit = min(settings.requests_per_batch, room_requests)
            for r in pending_pages(self.store, self.run_id, limit):
                if r.model == model and r.endpoint == endpoint:
                    same.append(r)
                    size = len(request_line(r.id, endpoint, b"")) + r.body_size + 1
                    yield Piece(model, endpoint, size, r.input_tokens, self._worst_cost(r))

        limits = BatchLimits(settings.requests_per_batch, settings.bytes_per_batch)
        packed = pack_next(pieces(), limits, settings.tokens_per_batch, Room(room, money_left))
        if packed is not None:
            batch_id = self.store.create_batch(
                self.run_id,
                same[: packed.requests],
                size=packed.bytes,
                file_name_prefix=f"batchpilot-{self.store.store_id}-{self.run_id}",
            )
            hold(self.store, self.config.account, model, self.run_id, batch_id, packed.input_tokens)
            worst, owner = packed.cost_usd, self.config.worker
            self.store.update_batch(self.run_id, batch_id, worker_id=owner, held_usd=worst)
            self._worst[batch_id] = worst
            return batch_id
        head = first[0]
        if (
            live
            or self.share.held_elsewhere(self.store)
            or shared_full(self.store, self.config.account, model, head.input_tokens)
        ):
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
            raise OutOfMoney(money_left, self._worst_cost(head))
        return None

    def _advance(self, batch: BatchRecord) -> bool:
        """Take one batch as far along its submission as it goes now."""
        try:
            if batch.state == BatchState.PLANNED:
                self._write_file(batch)
                batch = self.store.move_batch(self.run_id, batch.id, BatchState.UPLOADING)
                self._fresh.add((batch.id, "upload"))
                if self.on_step is not None:
                    self.on_step()
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
                self._remove_files(batch, [])
                self.store.fail_requests(self.run_id, [r.id for r in requests], f"rejected: {exc}")
                self._hold()
            return True

    def _reserve(self, batch: BatchRecord) -> BatchRecord | None:
        """Reserve the batch's worst case and record the intent to create it; None while the
        money left (after the real-time lane's requests in flight) cannot cover it."""
        worst = self._batch_worst(batch.id)
        with self.share.lock, self.store.tx():
            self._lock_run()
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
                        f"batch {batch.id} no longer fits the budget ({usd(worst)} at worst, "
                        f"{usd(left + self.share.held_usd)} left); its requests are packed again",
                    )
                    self.store.move_batch(self.run_id, batch.id, BatchState.ABANDONED)
                    self._hold()
                return None
            moved = self.store.move_batch(
                self.run_id, batch.id, BatchState.CREATING, reserved_usd=worst
            )
            self._worst.pop(batch.id, None)
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
        return any(b.id != batch.id for b in live) or self.share.held_elsewhere(self.store)

    def _lock_run(self) -> None:
        """With co-drivers, their money checks wait for this transaction's (`Store.lock_run`)."""
        if self.config.worker is not None:
            self.store.lock_run(self.run_id)

    def _back_off(self, message: str) -> None:
        delay = min(self.settings.max_poll_interval_s, max(1.0, self.settings.poll_interval_s))
        self._backoff_until = time.monotonic() + delay * random.uniform(0.75, 1.25)
        self.store.event(self.run_id, "retry", f"{message}; retrying in {delay:.0f}s")

    def _file_path(self, batch: BatchRecord) -> Path:
        return self.config.files_dir / batch.file_name

    def _write_file(self, batch: BatchRecord) -> Path:
        return write_batch_file(self.store, batch, self._file_path(batch))

    def _submitted(self, batch: BatchRecord, remote: RemoteBatch) -> BatchRecord:
        self._polls[batch.id] = _Poll(0.0, self.settings.poll_interval_s)
        submitted = record_submitted(self.store, self.run_id, batch, remote)
        if self.on_step is not None:
            self.on_step()
        return submitted

    # dropping and cancelling ---------------------------------------------------------------

    def drop_unsent(self) -> bool:
        """Batches not created yet are dropped, their requests back to pending, once the batch
        lane is not to take them (a near deadline, real time only, a met target). A batch whose
        creation may have happened is adopted if the provider lists it as ours (and is then
        polled, or cancelled, like any live batch), else dropped too."""
        if time.monotonic() < self._backoff_until:
            return False
        progressed = False
        for batch in self.mine(TO_SUBMIT):
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
            self._remove_files(batch, [])
            self.store.event(self.run_id, "dropped", f"batch {batch.id} was never created")
        return progressed

    def cancel_live(self, kind: str, why: str) -> bool:
        """Cancel the live batches not cancelled yet; one the provider will not cancel (it has
        ended) is not asked again, one it could not be asked about is asked again later."""
        todo = [b for b in self.mine([BatchState.SUBMITTED]) if b.id not in self._cancelled_late]
        done = cancel_batches(self.store, self.provider, self.run_id, todo, why, kind)
        self._cancelled_late.update(d.batch.id for d in done if d.outcome != "failed")
        return any(d.outcome == "cancelled" for d in done)

    # ===== calls to the provider: upload, create, find, poll, download, ingest ===============

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
        self._fence()
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
            self._fence()
            remote = self.provider.batches.submit(
                path, batch.endpoint, tags, staged=batch.input_file_id
            )
        return self._submitted(batch, remote)

    def _fence(self) -> None:
        if self.config.fence is not None:  # nothing remote once the run's lease may run out
            self.config.fence()

    def _find_remote(self, batch: BatchRecord) -> RemoteBatch | None:
        return find_batch(self.provider, batch, self.run_id, self.store.store_id)

    # polling and ingesting ------------------------------------------------------------------

    def poll_live(self) -> bool:
        progressed = False
        now = time.monotonic()
        live = self.mine([BatchState.SUBMITTED])
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
                if self.on_step is not None:
                    self.on_step()
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

    def _download(self, remote: RemoteBatch) -> list[Path]:
        return self.provider.batches.results(remote, self.config.files_dir)

    def _ingest(self, batch: BatchRecord, remote: RemoteBatch) -> None:
        with collector_paused():
            self._ingest_paused(batch, remote)

    def _ingest_paused(self, batch: BatchRecord, remote: RemoteBatch) -> None:
        requests = self.store.batch_requests(self.run_id, batch.id, bodies=False)
        downloaded: list[Path] = []
        if remote.status == RemoteStatus.FAILED:
            retry = self.settings.retry
            outcomes = failed_batch_outcomes(batch, remote, requests, retry, self._over_queue)
        else:
            downloaded = self._download(remote)
            outcomes = classify(
                requests,
                read_lines(downloaded),
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
        self._remove_files(batch, downloaded)
        done = sum(o.state == RequestState.SUCCEEDED for o in outcomes)
        self.store.event(
            self.run_id,
            "ingested",
            f"batch {batch.id} {remote.status.value}: {done} of {len(outcomes)} answered",
        )

    # ===== end of the calls to the provider ===================================================

    # after polling --------------------------------------------------------------------------

    def _turnaround(self) -> float:
        return self.scheduler.turnaround()

    def _past_window(self, batch: BatchRecord) -> bool:
        """Whether the batch's completion window (and an hour more) has passed."""
        if not batch.submitted_at_utc:
            return False
        elapsed = (datetime.now(UTC) - utc(batch.submitted_at_utc)).total_seconds()
        return elapsed * self.settings.time_scale > COMPLETION_WINDOW_S + 3600

    def _lost(self, batch: BatchRecord, misses: int) -> None:
        lose_batch(self.store, self.run_id, batch, misses, self.settings.retry)
        self._remove_files(batch, [])
        self._polls.pop(batch.id, None)

    def _schedule(self, poll: _Poll, batch: BatchRecord, turnaround: float) -> None:
        cap = self.scheduler.poll_cap(batch, turnaround)
        poll.interval = min(cap, max(poll.interval, 0.01) * 1.5)
        poll.due = time.monotonic() + poll.interval * random.uniform(0.8, 1.2)

    def _cost(self, request: PendingRequest, body: dict[str, Any]) -> tuple[int, int, float]:
        return usage_cost(self.settings.prices, request.model, body, batch=True)

    def _over_queue(self, batch: BatchRecord) -> None:
        learned = self.scheduler.learn_capacity(batch)
        self.store.event(
            self.run_id,
            "queue_limit",
            f"batch {batch.id} hit the enqueued-token limit; now keeping "
            f"{learned:,} tokens in the queue for {batch.model}",
        )

    def _remove_files(self, batch: BatchRecord, downloaded: list[Path]) -> None:
        """A batch's files once its outcomes are in the store, which can write them again."""
        for path in (self._file_path(batch), *downloaded):
            path.unlink(missing_ok=True)
