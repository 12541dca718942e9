"""The share between the batch lane and the real-time lane: one taker per request, the reserve,
and one budget across both lanes and threads."""

from __future__ import annotations

import threading
from pathlib import Path

from batchpilot.pricing import PriceTable
from batchpilot.run.share import LaneShare
from batchpilot.store import RequestState
from test_realtime_lane import MODEL, RUN, chat, make_store


def test_a_request_a_batch_took_while_the_lane_waited_is_gone_not_an_error(
    tmp_path: Path,
) -> None:
    store, ids = make_store(tmp_path, [chat(i) for i in range(4)])
    share = LaneShare(RUN, None, threading.Event())
    share.reserve = 2
    feed = share.feed(store)
    candidate = feed.next()
    assert candidate is not None and candidate.id == ids[-1]
    # meanwhile the reserve is given back to batches, and a batch takes everything
    share.reserve = None
    store.create_batch(RUN, store.pending(RUN, 10), size=1, file_name_prefix="b")
    share.reserve = 1
    assert feed.claim(candidate, 0.0) == "gone"
    assert store.request_counts(RUN)["queued"] == 4
    assert share.claimed == 0 and share.reserve == 1


def test_the_lane_takes_from_the_end_within_its_reserve(tmp_path: Path) -> None:
    store, ids = make_store(tmp_path, [chat(i) for i in range(5)])
    wake = threading.Event()
    share = LaneShare(RUN, None, wake)
    feed = share.feed(store)
    assert feed.next() is None, "nothing is the lane's before the runner says so"
    share.reserve = 2
    assert share.batch_room(store) == 3
    for expected in (ids[4], ids[3]):
        request = feed.next()
        assert request is not None and request.id == expected
        assert feed.claim(request, 0.0) is None
    assert share.reserve == 0 and feed.next() is None
    assert store.request_counts(RUN)["realtime"] == 2
    assert share.batch_room(store) >= 3, "with the reserve taken, batches may take the rest"
    feed.release(0.0)
    assert wake.is_set()
    share.reserve = None
    assert share.batch_room(store) == 0


def test_one_budget_holds_both_lanes(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, [chat(i) for i in range(3)])
    prices = PriceTable.load()
    request = store.pending(RUN, 1, from_end=True)[0]
    worst = prices.cost(
        MODEL,
        input_tokens=request.input_tokens,
        output_tokens=request.max_output_tokens,
        batch=False,
    )
    share = LaneShare(RUN, 2.5 * worst, threading.Event())
    share.reserve = None
    feed = share.feed(store)
    share.held_usd = worst  # a batch formed, not yet created
    assert feed.claim(request, worst) is None
    second = feed.next()
    assert second is not None
    assert feed.claim(second, worst) == "budget"
    assert not share.stuck(store), "the answer in flight gives money back"
    feed.release(worst)
    assert not share.stuck(store), "with the first one settled, the second one fits"
    share.held_usd = 2 * worst
    assert share.stuck(store), "batches hold the rest and nothing in flight gives any back"
    share.reserve = 0
    assert not share.stuck(store), "a lane with nothing left to take waits for nothing"
    assert feed.next() is None and share.short_of is None
    share.reserve, share.held_usd = None, 0.0
    assert feed.affordable(worst) and not share.stuck(store)
    assert store.request_counts(RUN)[RequestState.REALTIME] == 1
