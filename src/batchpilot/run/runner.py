"""The run loop: each round it polls the batches, lets the scheduler say which lane takes what,
winds down once a target is met, and stops on Ctrl-C, on a used-up budget or once every request
has ended.

The batch lane (`lanes/batch.py`) runs in this thread; the real-time lane in a thread of its
own (`run/share.py`), sharing the pending requests and the money through one lock.

A run may have co-drivers (workers on a shared store, `RunConfig.worker`): each drives its own
batches and real-time requests, and once a round (at most every `TAKEOVER_S`) takes over those
of a co-driver whose lease ran out. Whichever sees every request ended finishes the run.
"""

from __future__ import annotations

import time
from typing import Any

from batchpilot.errors import UserInputError
from batchpilot.formatting import duration, usd
from batchpilot.lanes.batch import TO_SUBMIT, BatchLane
from batchpilot.lanes.realtime import RealtimeLane, recover_inflight
from batchpilot.providers.base import AuthenticationFailed, Provider
from batchpilot.run.budget import check_worst_cases, stop_for_budget
from batchpilot.run.config import RunConfig
from batchpilot.run.interrupt import Interrupt, how_to_continue, notice
from batchpilot.run.scheduler import LIVE, Mode, Scheduler
from batchpilot.run.share import LaneShare, LaneThread
from batchpilot.run.status import RunStatus, run_status
from batchpilot.store import BatchState, PendingRequest, RunState, Store

__all__ = ["Runner"]

LANE_TICK_S = 0.02  # after a real-time answer, wait this long so that a burst is seen at once
TAKEOVER_S = 1.0  # how often a co-driver looks for the work of one whose lease ran out


class Runner:
    """Drives one run to its end with a batch lane and, unless the strategy is `batch`, a
    real-time lane (`lane`)."""

    def __init__(
        self,
        store: Store,
        provider: Provider,
        config: RunConfig,
        lane: RealtimeLane | None = None,
        interrupt: Interrupt | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.settings = config.settings
        self.run_id = config.run_id
        self.lane = lane
        self.interrupt = interrupt or Interrupt()
        self.share = LaneShare(
            self.run_id, self.settings.budget_usd, self.interrupt.wake, config.worker
        )
        self.scheduler = Scheduler(store, config, self.share, lane.throttle if lane else None)
        self.batches = BatchLane(
            store, provider, config, self.share, self.scheduler, self.interrupt.stop
        )
        self.batches.on_step = self._tell
        self._lane_thread: LaneThread | None = None
        self._goal_met = False
        self._seen: RunStatus | None = None  # the latest status, for what Ctrl-C says
        self._resume = how_to_continue(None, self.run_id)
        self._looked = 0.0  # when (monotonic) the last takeover looked

    def run(self) -> RunStatus:
        """Drive the run until every request has ended, or until stopped or detached."""
        if self.settings.strategy != "batch" and self.lane is None:
            raise UserInputError(f"strategy {self.settings.strategy} needs a real-time client")
        check_worst_cases(self.store, self.run_id, self.settings.budget_usd, self.settings.prices)
        self.config.files_dir.mkdir(parents=True, exist_ok=True)
        self.store.move_run(self.run_id, RunState.RUNNING)
        accept = None if self.config.check is None else self._cached_ok
        cached = self.store.apply_cache(self.run_id, accept) if self.config.use_cache else 0
        if cached:
            self.store.event(self.run_id, "cache", f"{cached} requests answered from the cache")
        self._take_over(force=True)
        record = self.store.run(self.run_id)
        self._resume = how_to_continue(record.kind if record else None, self.run_id)
        self._seen = self.status()
        self.interrupt.say = self._interrupted
        try:
            status = self._loop()
            if self.config.on_progress is not None:
                self.config.on_progress(status)
            return status
        except AuthenticationFailed as exc:
            # The key, not a batch, is wrong: stop with every intent kept, so that a run with
            # the right key continues instead of finding its requests failed for good.
            self._close_lane()
            self.store.event(self.run_id, "error", str(exc))
            self.store.move_run(self.run_id, RunState.STOPPED)
            raise
        finally:
            self._close_lane()

    def _cached_ok(self, request: PendingRequest, body: dict[str, Any]) -> bool:
        """A cached answer counts only if it passes this run's checks (another run's may differ)."""
        assert self.config.check is not None
        return self.config.check(request, body) is None

    # the loop -------------------------------------------------------------------------------

    def _loop(self) -> RunStatus:
        while True:
            if self.config.fence is not None:
                self.config.fence()
            if self.interrupt.stop.is_set():
                return self._stop()
            self._take_over()
            self._check_lane()
            progressed = self.batches.poll_live()
            if self.interrupt.stop.is_set():
                pass
            elif self._goal_reached():
                progressed |= self._wind_down()
            else:
                progressed |= self._dispatch()
            status = self.status()
            self._check_lane_budget(status)
            if self.config.on_progress is not None:
                self.config.on_progress(status)
            if status.finished:
                return self._finish(status)
            if self.settings.detach and not self.store.batches(self.run_id, TO_SUBMIT):
                self._close_lane()
                self.store.event(self.run_id, "detached", "submitted; not waiting")
                return self.status()
            if not progressed:
                self._sleep()

    def _finish(self, status: RunStatus) -> RunStatus:
        """Every request has ended: the run is finished, once, by whichever co-driver sees it
        first (the others find it so)."""
        self._close_lane()
        with self.store.tx():
            if self.config.worker is not None:
                self.store.lock_run(self.run_id)
            record = self.store.run(self.run_id)
            if record is None or record.status != RunState.FINISHED:
                if record is not None and record.status == RunState.STOPPED:
                    self.store.move_run(self.run_id, RunState.RUNNING)  # a co-driver's stop
                self.store.move_run(self.run_id, RunState.FINISHED)
                ended = (
                    "every request has ended"
                    if status.total
                    else "nothing to do: the run has no requests"
                )
                self.store.event(self.run_id, "finished", ended)
        return self.status()

    def _take_over(self, *, force: bool = False) -> None:
        """Requests left in flight by a crash are counted at their worst case and go back to
        pending; with co-drivers, only those of a worker whose lease ran out, whose batches
        this worker now drives too (each taken over by one worker only)."""
        worker = self.config.worker
        now = time.monotonic()
        if not force and (worker is None or now - self._looked < TAKEOVER_S):
            return
        self._looked = now
        if worker is not None:
            adopted = self.store.adopt_batches(self.run_id, worker)
            if adopted and set(self.store.drivers(self.run_id)) - {worker}:
                # (a worker that took the whole run over has said so when it took it)
                self.store.event(
                    self.run_id,
                    "worker",
                    f"worker {worker} takes over batches {', '.join(map(str, adopted))} "
                    "of a co-driver whose lease ran out",
                )
        recovered, charged = recover_inflight(
            self.store, self.run_id, self.settings.prices, self.settings.retry, worker
        )
        if recovered:
            self.store.event(
                self.run_id,
                "recovered",
                f"{recovered} real-time requests were in flight at a crash; each may have run "
                f"and is counted at its worst case ({usd(charged)} in all)",
            )

    def _dispatch(self) -> bool:
        """This round's sending, as the scheduler says."""
        mode = self.scheduler.mode()
        if mode is Mode.BATCH:
            return self.batches.submit_more()
        if mode is Mode.REALTIME:
            self.share.reserve = None
            self._start_lane()
            return self.batches.drop_unsent()
        if mode is Mode.DEADLINE:
            # Everything pending goes real time; batches that cannot finish by the deadline are
            # cancelled, and what they did not run comes back as pending once ingested.
            self.share.reserve = None
            self._start_lane()
            dropped = self.batches.drop_unsent()
            return self.batches.cancel_live("deadline", "to finish before the deadline") | dropped
        self.scheduler.rebalance()
        progressed = self.batches.submit_more()
        self._start_lane()  # after the batches: a batch's turnaround starts when it is created
        return progressed

    def _goal_reached(self) -> bool:
        target = self.config.target
        if not self._goal_met and target is not None and target.met():
            self._goal_met = True
            self.store.event(self.run_id, "target", f"{target.goal} valid; sending nothing more")
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
        progressed |= self.batches.drop_unsent()
        progressed |= self.batches.cancel_live("target", "no longer needed")
        if not self.store.batches(self.run_id, LIVE):
            reason = "not_needed: the target was met before it was sent"
            progressed |= self.store.cancel_pending(self.run_id, reason) > 0
        return progressed

    def _tell(self) -> None:
        """Give the run's status to `on_progress` in the middle of a round: before a step that
        may take long (an upload, collecting a batch's answers), and once a batch exists
        remotely (which Ctrl-C then speaks of)."""
        status = self.status()
        if self.config.on_progress is not None:
            self.config.on_progress(status)

    def _interrupted(self, presses: int) -> str:
        """What a Ctrl-C does now, from the latest status (the store is not read in the
        signal handler)."""
        seen = self._seen
        live = seen.batches.get(BatchState.SUBMITTED, 0) if seen is not None else 0
        live = max(live, self.batches.polled())  # one made since the latest status
        wire = seen.requests.get("realtime", 0) if seen is not None else 0
        return notice(
            presses,
            live=live,
            on_the_wire=wire if self._lane_thread is not None else 0,
            cancel=self.settings.cancel_on_exit,
            resume=self._resume,
        )

    def status(self) -> RunStatus:
        """The run's progress: the one place the loop reads it."""
        status = run_status(self.store, self.run_id, self.settings.budget_usd)
        status.realtime_lane = self._lane_thread is not None
        target = self.config.target
        if target is not None:
            status.target, status.valid = target.goal, target.count()
        if self._lane_thread is not None and self.lane is not None and status.requests["pending"]:
            wait = self.lane.throttle.day_wait()
            if wait > 0:
                status.waiting.append(
                    f"the day's {self.lane.throttle.limits.rpd} real-time requests are used "
                    f"up: the next one in about {duration(wait)}"
                )
        self._seen = status
        return status

    def _sleep(self) -> None:
        now = time.monotonic()
        interval = self.settings.poll_interval_s
        wait = min([due - now for due in self.batches.dues() if due > now], default=interval)
        wait = max(0.01, min(wait, interval))
        woken = self.interrupt.wake.wait(wait)
        self.interrupt.wake.clear()
        if woken and not self.interrupt.stop.is_set():
            self.interrupt.stop.wait(min(LANE_TICK_S, wait))

    def _stop(self) -> RunStatus:
        self._close_lane()
        if self.settings.cancel_on_exit or self.interrupt.cancel.is_set():
            self.batches.cancel_all("on stop")
        else:
            live = self.batches.mine([BatchState.SUBMITTED])
            self.store.event(
                self.run_id, "stopped", f"stopped with {len(live)} batches still running remotely"
            )
        worker = self.config.worker
        if worker is not None and set(self.store.drivers(self.run_id)) - {worker}:
            # co-drivers go on; what this worker leaves is theirs once its lease is given back
            self.store.event(self.run_id, "worker", f"worker {worker} stops; its co-drivers go on")
        else:
            self.store.move_run(self.run_id, RunState.STOPPED)
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

    def _check_lane_budget(self, status: RunStatus) -> None:
        """Stop the run when the lane waits for money that nothing will give back: nothing in
        flight, no batch in the queue, and the batch lane has had its chance this round."""
        if self._lane_thread is None or not self.share.stuck(self.store):
            return
        if self.store.batches(self.run_id, LIVE):
            return
        if status.requests.get("pending"):
            self._close_lane()
            raise stop_for_budget(self.store, self.run_id, self.settings.budget_usd)
