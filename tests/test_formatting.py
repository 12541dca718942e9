"""Money and durations are written one way everywhere."""

from __future__ import annotations

import pytest

from batchpilot.formatting import duration, usd


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0.0, "$0.00"),
        (25.0, "$25.00"),
        (1234.5, "$1,234.50"),
        (0.1, "$0.10"),
        (0.05, "$0.0500"),
        (0.000631, "$0.000631"),
        (0.0123456, "$0.0123"),
        (-0.002, "$-0.00200"),
    ],
)
def test_dollars_keep_three_significant_digits_below_ten_cents(amount: float, text: str) -> None:
    assert usd(amount) == text


def test_a_missing_amount_is_named() -> None:
    assert usd(None) == "no limit"
    assert usd(None, none="unknown") == "unknown"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (59.4, "59 s"),
        (60, "1 min"),
        (12 * 60, "12 min"),
        (3600, "1.0 h"),
        (20.4 * 3600, "20.4 h"),
        (86_400, "1.0 days"),
        (3.5 * 86_400, "3.5 days"),
    ],
)
def test_durations_pick_their_unit(seconds: float, text: str) -> None:
    assert duration(seconds) == text
