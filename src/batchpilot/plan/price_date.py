"""How old the prices behind a plan are: the price table's date, each planned model's row
date, and whether the table is old enough that its prices may have changed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from batchpilot.pricing import PriceTable

__all__ = ["STALE_AFTER_DAYS", "price_dates", "stale_warning"]

STALE_AFTER_DAYS = 180
"""A price table older than this is said to be stale by `plan`."""


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def price_dates(prices: PriceTable, models: Iterable[str]) -> dict[str, Any]:
    """`updated` (the table's date), `age_days`, `stale`, `stale_after_days`, and `as_of`: the
    date of each model's price row (a job's own price counts from the day it is read)."""
    updated = dt.date.fromisoformat(str(prices.updated))
    age = (_today() - updated).days
    return {
        "updated": updated.isoformat(),
        "age_days": age,
        "stale": age > STALE_AFTER_DAYS,
        "stale_after_days": STALE_AFTER_DAYS,
        "as_of": {model: prices.price(model).as_of for model in models if prices.has(model)},
    }


def stale_warning(dates: dict[str, Any]) -> str | None:
    """The warning for a stale table, or None."""
    if not dates["stale"]:
        return None
    return (
        f"the price table is {dates['age_days']} days old (updated {dates['updated']}); prices "
        "may have changed: check the provider's current prices, give them under `prices:` in "
        "the job file, or upgrade batchpilot"
    )
