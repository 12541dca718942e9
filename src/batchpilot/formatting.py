"""Money and durations as people read them, the same in every message and table."""

from __future__ import annotations

import math

__all__ = ["duration", "usd"]


def usd(amount: float | None, none: str = "no limit") -> str:
    """Dollars readable at any size: $25.00 and $1,234.50, but $0.000631 rather than $0.00
    (three significant digits below ten cents); `none` stands for a missing amount."""
    if amount is None:
        return none
    if abs(amount) >= 0.1 or amount == 0:
        return f"${amount:,.2f}"
    return f"${amount:.{2 - math.floor(math.log10(abs(amount)))}f}"


def duration(seconds: float) -> str:
    """A length of time, readable: 45 s, 12 min, 20.4 h, 3.5 days."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"
