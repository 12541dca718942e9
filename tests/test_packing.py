"""Packing respects every limit at once, keeps input order, and loses nothing (property-based)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpilot.plan.packing import BatchLimits, Packer, Piece, Room, pack_next
from batchpilot.store import PendingRequest

requests = st.lists(
    st.tuples(
        st.sampled_from(["gpt-4o-mini", "gpt-4o"]),
        st.integers(min_value=1, max_value=5_000),
        st.integers(min_value=0, max_value=3_000),
    ),
    max_size=300,
)
limits = st.builds(
    BatchLimits,
    requests=st.integers(min_value=1, max_value=40),
    bytes=st.integers(min_value=1_000, max_value=50_000),
    tokens=st.one_of(st.none(), st.integers(min_value=500, max_value=20_000)),
)


@settings(max_examples=300, deadline=None)
@given(requests, limits)
def test_every_batch_respects_every_limit(
    items: list[tuple[str, int, int]], limit: BatchLimits
) -> None:
    packer = Packer(limit)
    placed = [
        packer.add(model, size, tokens, row) for row, (model, size, tokens) in enumerate(items)
    ]
    members: dict[int, list[int]] = {}
    for row, batch in enumerate(placed):
        members.setdefault(batch.index, []).append(row)
    assert sum(b.requests for b in packer.batches) == len(items)
    for batch in packer.batches:
        rows = members[batch.index]
        assert {items[r][0] for r in rows} == {batch.model}
        assert batch.requests == len(rows)
        assert batch.bytes == sum(items[r][1] for r in rows)
        assert batch.input_tokens == sum(items[r][2] for r in rows)
        assert rows == sorted(rows)
        if len(rows) > 1:  # a request over a limit on its own still travels alone
            assert batch.requests <= limit.requests
            assert batch.bytes <= limit.bytes
            assert limit.tokens is None or batch.input_tokens <= limit.tokens


@settings(max_examples=200, deadline=None)
@given(requests, limits)
def test_batches_of_one_model_are_in_input_order(
    items: list[tuple[str, int, int]], limit: BatchLimits
) -> None:
    packer = Packer(limit)
    order: dict[str, list[int]] = {}
    for row, (model, size, tokens) in enumerate(items):
        order.setdefault(model, []).append(packer.add(model, size, tokens, row).index)
    for indexes in order.values():
        assert indexes == sorted(indexes)


def test_per_model_token_limits_come_from_the_callback() -> None:
    packer = Packer(BatchLimits(), {"a": 10, "b": None}.get)
    for _ in range(3):
        packer.add("a", 1, 6)
        packer.add("b", 1, 6)
    assert [(b.model, b.requests) for b in packer.batches] == [
        ("a", 1),
        ("b", 3),
        ("a", 1),
        ("a", 1),
    ]


def test_defaults_are_the_batch_api_limits() -> None:
    limits = BatchLimits()
    assert limits.requests == 50_000
    assert limits.bytes < 200 * 1024 * 1024


pieces = st.lists(
    st.builds(
        Piece,
        model=st.sampled_from(["gpt-4o-mini", "gpt-4o"]),
        endpoint=st.just("/v1/chat/completions"),
        size=st.integers(min_value=1, max_value=5_000),
        tokens=st.integers(min_value=0, max_value=3_000),
        cost_usd=st.floats(min_value=0, max_value=1),
    ),
    min_size=1,
    max_size=100,
)


@settings(max_examples=200, deadline=None)
@given(pieces, limits)
def test_a_run_packs_pending_requests_as_the_plan_does(
    items: list[Piece], limit: BatchLimits
) -> None:
    packer = Packer(limit)
    for piece in items:
        packer.add(piece.model, piece.size, piece.tokens, None, piece.endpoint)
    planned = next(b for b in packer.batches if b.model == items[0].model)
    packed = pack_next(items, limit)
    assert packed is not None
    assert (packed.model, packed.requests, packed.bytes, packed.input_tokens) == (
        planned.model,
        planned.requests,
        planned.bytes,
        planned.input_tokens,
    )


@settings(max_examples=200, deadline=None)
@given(pieces, limits, st.integers(min_value=0, max_value=20_000), st.floats(0, 10))
def test_a_run_packs_within_the_queue_room_and_the_money_left(
    items: list[Piece], limit: BatchLimits, tokens: int, usd: float
) -> None:
    packed = pack_next(items, limit, room=Room(tokens, usd))
    same = [p for p in items if p.model == items[0].model]
    if packed is None:  # not even the first request fits
        assert same[0].tokens > tokens or same[0].cost_usd > usd
        return
    members = same[: packed.requests]
    assert packed.input_tokens == sum(p.tokens for p in members) <= tokens
    assert packed.cost_usd == pytest.approx(sum(p.cost_usd for p in members))
    assert packed.cost_usd <= usd
    if packed.requests < len(same):  # it stopped at the first request that does not fit
        following = same[packed.requests]
        fits_room = Room(tokens, usd).holds(
            packed.input_tokens + following.tokens, packed.cost_usd + following.cost_usd
        )
        fits_limits = (
            packed.requests < limit.requests
            and packed.bytes + following.size <= limit.bytes
            and (limit.tokens is None or packed.input_tokens + following.tokens <= limit.tokens)
        )
        assert not (fits_room and fits_limits)


def test_a_run_packs_one_model_and_endpoint_at_a_time() -> None:
    items = [
        Piece("a", "/v1/chat/completions", 10, 5),
        Piece("b", "/v1/chat/completions", 10, 5),
        Piece("a", "/v1/embeddings", 10, 5),
        Piece("a", "/v1/chat/completions", 10, 5),
    ]
    packed = pack_next(items, BatchLimits())
    assert packed is not None
    assert (packed.model, packed.endpoint, packed.requests) == ("a", "/v1/chat/completions", 2)


def test_a_request_over_a_batch_limit_still_travels_alone_but_not_over_the_room() -> None:
    big = [Piece("a", "/v1/chat/completions", 10, 500), Piece("a", "/v1/chat/completions", 10, 1)]
    packed = pack_next(big, BatchLimits(tokens=100))
    assert packed is not None and packed.requests == 1
    assert pack_next(big, BatchLimits(), room=Room(tokens=100)) is None
    assert pack_next(big, BatchLimits(), room=Room(usd=0.5)) is not None
    assert pack_next([Piece("a", "/e", 1, 1, 0.75)], BatchLimits(), room=Room(usd=0.5)) is None


def test_forming_a_batch_reads_pending_requests_page_by_page(tmp_path: Path) -> None:
    from batchpilot.lanes.forming import FIRST_PAGE, pending_pages
    from batchpilot.store import RunRecord, SQLiteStore, utc_now

    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.create_run(RunRecord("r", "job", "{}", "openai", "/e", "planned", None, utc_now()))
    with store.tx():
        for i in range(FIRST_PAGE * 4):
            store.add_request("r", f"q{i}", f"h{i}", "/e", "m", b"{}", 1, 1, i)
    asked: list[int] = []
    pending = store.pending

    class Counting:
        def pending(self, run_id: str, limit: int, **kw: Any) -> list[PendingRequest]:
            asked.append(limit)
            return pending(run_id, limit, **kw)

    pages = pending_pages(Counting(), "r", 10**6)  # type: ignore[arg-type]
    taken = list(itertools.islice(pages, FIRST_PAGE + 1))
    assert [r.first_row for r in taken] == list(range(FIRST_PAGE + 1))
    assert asked == [FIRST_PAGE, FIRST_PAGE * 2]  # what the packer took, give or take a page
    assert len(list(pending_pages(store, "r", 300))) == 300
    assert len(list(pending_pages(store, "r", 10**6))) == FIRST_PAGE * 4
    store.close()
