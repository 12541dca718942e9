"""Packing respects every limit at once, keeps input order, and loses nothing (property-based)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchpilot.plan.packing import BatchLimits, Packer

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
