"""Target mode: how many valid answers (or items) a run has, and how many rows to plan next."""

from __future__ import annotations

import json
import math
from typing import Any

from batchpilot.spec import TargetSpec
from batchpilot.store import SQLiteStore

__all__ = ["TargetCounter", "first_wave", "next_wave"]


def _content(response: dict[str, Any]) -> str | None:
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None
    output = response.get("output_text")
    return output if isinstance(output, str) else None


def items_in(response_json: str, field: str) -> int:
    """How many elements the answer's list field `field` holds (0 when it has none)."""
    content = _content(json.loads(response_json))
    if content is None:
        return 0
    try:
        parsed = json.loads(content)
    except ValueError:
        return 0
    value = parsed.get(field) if isinstance(parsed, dict) else None
    return len(value) if isinstance(value, list) else 0


class TargetCounter:
    """Counts a run's valid answers, or the items inside them; each answer is read once."""

    def __init__(self, store: SQLiteStore, run_id: str, target: TargetSpec) -> None:
        self.store = store
        self.run_id = run_id
        self.target = target
        self._items: dict[str, int] = {}

    @property
    def goal(self) -> int:
        return self.target.valid

    def count(self) -> int:
        field = self.target.items
        total = 0
        for request_id, response_json in self.store.answered_rows(self.run_id):
            if field is None:
                total += 1
                continue
            known = self._items.get(request_id)
            if known is None:
                known = self._items[request_id] = items_in(response_json, field)
            total += known
        return total

    def met(self) -> bool:
        return self.count() >= self.goal


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
