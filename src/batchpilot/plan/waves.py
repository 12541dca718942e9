"""Target mode: how many rows each wave plans."""

from __future__ import annotations

import math

from batchpilot.spec import TargetSpec

__all__ = ["first_wave", "next_wave"]


def first_wave(target: TargetSpec) -> int:
    """Rows in the first wave: as the job says, else the target plus the overshoot (for
    items, a tenth of that: an answer usually holds several)."""
    if target.first_rows is not None:
        return target.first_rows
    rows = math.ceil(target.valid * target.overshoot)
    return rows if target.items is None else max(5, math.ceil(rows / 10))


def next_wave(target: TargetSpec, produced: int, ended_rows: int) -> int:
    """Rows to plan next so that, at the pass rate seen so far, the target is met with the
    overshoot to spare. Needs at least one valid answer so far (the rate is not zero)."""
    rate = produced / ended_rows
    return max(1, math.ceil((target.valid - produced) / rate * target.overshoot))
