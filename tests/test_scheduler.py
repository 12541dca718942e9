"""The scheduler's decisions: from plain values, and from a store with no server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchpilot.lanes.ratelimit import RateLimits, Throttle
from batchpilot.run.config import RunConfig
from batchpilot.run.scheduler import (
    Mode,
    Scheduler,
    announce_due,
    capacity,
    choose_mode,
    deadline_near,
    in_queue,
    learn_capacity,
    poll_cap,
    turnaround,
)
from batchpilot.run.settings import RunSettings
from batchpilot.run.share import LaneShare
from batchpilot.store import BatchRecord, SQLiteStore
from test_realtime_lane import RUN, chat, make_store

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def batch(
    *,
    model: str = "m",
    tokens: int = 100,
    submitted: datetime | None = None,
    finished: datetime | None = None,
    remote_status: str | None = "completed",
) -> BatchRecord:
    return BatchRecord(
        run_id="run",
        id=1,
        state="finished" if finished else "submitted",
        endpoint="/v1/chat/completions",
        model=model,
        requests=1,
        bytes=10,
        input_tokens=tokens,
        file_name="f",
        input_file_id=None,
        remote_id=None,
        remote_status=remote_status,
        output_file_id=None,
        error_file_id=None,
        completed=0,
        failed=0,
        reserved_usd=0.0,
        spent_usd=0.0,
        not_found=0,
        error=None,
        created_at_utc=_stamp(NOW),
        submitted_at_utc=None if submitted is None else _stamp(submitted),
        finished_at_utc=None if finished is None else _stamp(finished),
    )


def took(minutes: float, status: str = "completed") -> BatchRecord:
    start = NOW - timedelta(hours=5)
    return batch(submitted=start, finished=start + timedelta(minutes=minutes), remote_status=status)


@pytest.mark.parametrize(
    ("strategy", "near", "mode"),
    [
        ("batch", False, Mode.BATCH),
        ("batch", True, Mode.BATCH),  # a batch-only run never goes real time
        ("realtime", False, Mode.REALTIME),
        ("realtime", True, Mode.REALTIME),
        ("hybrid", False, Mode.HYBRID),
        ("hybrid", True, Mode.DEADLINE),
    ],
)
def test_only_a_hybrid_run_turns_to_real_time_at_the_deadline(
    strategy: str, near: bool, mode: Mode
) -> None:
    assert choose_mode(strategy, near) is mode


def test_the_turnaround_is_the_median_of_the_completed_batches() -> None:
    batches = [took(10), took(30), took(20), took(1, "cancelled"), took(2, "failed")]
    assert turnaround(batches, 999.0, 1.0) == 20 * 60


def test_without_a_completed_batch_the_turnaround_is_the_setting() -> None:
    assert turnaround([took(1, "expired"), batch()], 3600.0, 1.0) == 3600.0


def test_a_learned_turnaround_is_in_provider_time() -> None:
    assert turnaround([took(2)], 999.0, 60.0) == 2 * 60 * 60


def test_the_deadline_is_near_once_a_batch_created_now_would_end_past_it() -> None:
    deadline = NOW + timedelta(hours=2)
    assert not deadline_near(None, 10 * 3600, 1.0, NOW)
    assert not deadline_near(deadline, 3600, 1.0, NOW)
    assert deadline_near(deadline, 3 * 3600, 1.0, NOW)
    # against a server in virtual time, a day of provider time is minutes of wall time
    assert not deadline_near(deadline, 24 * 3600, 3600.0, NOW)


def test_batches_in_the_queue_finish_after_what_is_left_of_their_turnaround() -> None:
    queued = [
        batch(tokens=100, submitted=NOW - timedelta(minutes=10)),
        batch(tokens=200),  # planned: not created yet
        batch(tokens=300, submitted=NOW - timedelta(hours=5)),  # late
        batch(model="other", tokens=400),
    ]
    assert in_queue(queued, "m", 3600.0, 1.0, NOW) == ((3000.0, 100), (3600.0, 200), (0.0, 300))


def test_the_queue_capacity_is_the_lower_of_the_configured_and_the_learned() -> None:
    assert capacity(None, None) is None
    assert capacity(1000, None) == 1000
    assert capacity(None, 500) == 500
    assert capacity(1000, 500) == 500
    assert capacity(400, 500) == 400


def test_a_refused_batch_teaches_a_limit_that_never_rises() -> None:
    alone = learn_capacity(1000, 0, None)
    assert alone == 800
    shared = learn_capacity(1000, 1000, None)
    assert shared == 1800
    assert learn_capacity(1000, 5000, known=alone) == alone  # a later refusal cannot raise it
    assert learn_capacity(10, 0, known=alone) == 8
    assert learn_capacity(1, 0, None) == 1  # never nothing at all


def cap(
    submitted: datetime | None,
    turnaround_s: float,
    *,
    deadline: datetime | None = None,
    time_scale: float = 1.0,
) -> float:
    return poll_cap(
        None if submitted is None else _stamp(submitted),
        turnaround_s,
        time_scale=time_scale,
        deadline=deadline,
        poll_interval_s=5.0,
        max_poll_interval_s=600.0,
        now=NOW,
    )


def test_polls_are_at_most_a_quarter_of_the_time_a_batch_may_still_take() -> None:
    assert cap(None, 1200.0) == 300.0
    assert cap(NOW - timedelta(minutes=10), 1200.0) == 150.0
    assert cap(None, 1200.0, deadline=NOW + timedelta(minutes=4)) == 60.0


def test_a_late_batch_is_polled_at_a_twentieth_of_its_turnaround() -> None:
    assert cap(NOW - timedelta(hours=1), 1200.0) == 60.0


def test_polls_stay_between_the_poll_interval_and_the_maximum() -> None:
    assert cap(None, 8.0) == 5.0
    assert cap(None, 24 * 3600.0) == 600.0
    assert cap(None, 24 * 3600.0, time_scale=3600.0) == 6.0  # a virtual day is 24 s


def test_the_split_is_announced_when_it_moves_more_than_rounding() -> None:
    assert announce_due(10, None, 1000)
    assert not announce_due(15, 10, 1000)  # within a hundredth of the run
    assert announce_due(21, 10, 1000)
    assert not announce_due(11, 10, 50)  # at least one request either way
    assert announce_due(12, 10, 50)


def scheduler_for(
    tmp_path: Path, limits: RateLimits, requests: int = 40
) -> tuple[Scheduler, LaneShare, SQLiteStore]:
    store, _ = make_store(tmp_path, [chat(i) for i in range(requests)])
    settings = RunSettings(strategy="hybrid", turnaround_s=3600.0, poll_interval_s=0.0)
    share = LaneShare(RUN, None, threading.Event())
    config = RunConfig(RUN, settings, tmp_path / "files")
    return Scheduler(store, config, share, Throttle(limits)), share, store


def hybrid_events(store: SQLiteStore) -> list[str]:
    return [e["message"] for e in store.events(RUN) if e["kind"] == "hybrid"]


def test_a_fast_real_time_lane_takes_every_pending_request_and_says_so_once(
    tmp_path: Path,
) -> None:
    scheduler, share, store = scheduler_for(tmp_path, RateLimits(rpm=6000))
    scheduler.rebalance()
    scheduler.rebalance()  # the same split again: nothing more to say
    assert share.reserve == 40
    assert hybrid_events(store) == [
        "40 of the 40 pending requests go real time; both lanes done in about 0 s"
    ]
    store.close()


def test_a_day_of_real_time_requests_used_up_leaves_the_pending_requests_to_batches(
    tmp_path: Path,
) -> None:
    scheduler, share, store = scheduler_for(tmp_path, RateLimits(rpd=10))
    assert scheduler.throttle is not None
    scheduler.throttle.spent_today(10)
    scheduler.rebalance()
    assert share.reserve == 0
    assert hybrid_events(store) == [
        "0 of the 40 pending requests go real time; both lanes done in about 1.0 h"
    ]
    store.close()


def test_with_nothing_pending_the_real_time_lane_takes_nothing(tmp_path: Path) -> None:
    scheduler, share, store = scheduler_for(tmp_path, RateLimits(rpm=6000), requests=0)
    share.reserve = 5
    scheduler.rebalance()
    assert share.reserve == 0 and hybrid_events(store) == []
    store.close()


def test_adding_up_a_large_pending_set_takes_at_most_a_twentieth_of_the_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Choosing the split reads every pending request: at millions of them, it is chosen again
    no sooner than twenty times as long as that took, however short the poll interval."""
    scheduler, share, store = scheduler_for(tmp_path, RateLimits(rpm=6000))
    clock = [1000.0]
    scheduler._clock = lambda: clock[0]
    totals = store.pending_totals
    calls: list[float] = []

    def slow(run_id: str) -> tuple[int, int, int]:
        calls.append(clock[0])
        clock[0] += 2.0  # as a few million pending requests take
        return totals(run_id)

    monkeypatch.setattr(store, "pending_totals", slow)
    for at in (1000.0, 1030.0, 1039.9, 1040.0, 1050.0):
        clock[0] = at
        scheduler.rebalance()
    assert calls == [1000.0, 1040.0]
    assert share.reserve == 40
    monkeypatch.setattr(store, "pending_totals", totals)  # quick again: every poll interval
    clock[0] = 1100.0
    scheduler.rebalance()
    scheduler.rebalance()
    assert scheduler._balance_due == 1100.0
    store.close()
