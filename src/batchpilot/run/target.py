"""Target mode: how many valid answers (or items) a run has."""

from __future__ import annotations

import json

from batchpilot.answers import parsed_answer, response_content
from batchpilot.spec import TargetSpec
from batchpilot.store import Store

__all__ = ["TargetCounter", "items_in"]


def items_in(response_json: str, field: str) -> int:
    """How many elements the answer's list field `field` holds (0 when it has none)."""
    parsed = parsed_answer(response_content(json.loads(response_json))[0])
    value = parsed.get(field) if isinstance(parsed, dict) else None
    return len(value) if isinstance(value, list) else 0


class TargetCounter:
    """Counts a run's valid answers, or the items inside them; each answer is read once."""

    def __init__(self, store: Store, run_id: str, target: TargetSpec) -> None:
        self.store = store
        self.run_id = run_id
        self.target = target
        self._items: dict[str, int] = {}

    @property
    def goal(self) -> int:
        return self.target.valid

    def count(self) -> int:
        field = self.target.items
        if field is None:
            return self.store.row_outcomes(self.run_id).get("succeeded", 0)
        total = 0
        for request_id, response_json in self.store.answered_rows(self.run_id):
            known = self._items.get(request_id)
            if known is None:
                known = self._items[request_id] = items_in(response_json, field)
            total += known
        return total

    def met(self) -> bool:
        return self.count() >= self.goal
