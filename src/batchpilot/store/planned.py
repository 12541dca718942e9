"""One row or one request at a time, for callers that plan a few: each goes through the
store's `add_planned`, the one way planned rows and requests are written."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchpilot.store.records import NewRequest, NewRow, row_json

__all__ = ["PlannedMixin", "by_model"]


def by_model(requests: Sequence[NewRequest]) -> dict[str, tuple[int, int]]:
    """(requests, input tokens) of `requests`, by model: what planning them adds to their run's
    totals (`run_models`)."""
    totals: dict[str, tuple[int, int]] = {}
    for request in requests:
        count, tokens = totals.get(request.model, (0, 0))
        totals[request.model] = (count + 1, tokens + request.input_tokens)
    return totals


class PlannedMixin:
    def add_planned(
        self, run_id: str, rows: Sequence[NewRow], requests: Sequence[NewRequest]
    ) -> None:
        raise NotImplementedError

    def add_row(
        self,
        run_id: str,
        index: int,
        row_id: str,
        source: str,
        request_id: str | None,
        data: dict[str, Any] | None,
        skip_reason: str | None = None,
    ) -> None:
        data_json = None if data is None else row_json(data)
        row = NewRow(index, row_id, source, request_id, data_json, skip_reason)
        self.add_planned(run_id, [row], [])

    def add_request(
        self,
        run_id: str,
        request_id: str,
        content_hash: str,
        endpoint: str,
        model: str,
        body: bytes,
        input_tokens: int,
        max_output_tokens: int,
        first_row: int,
        *,
        worst: tuple[int | None, float | None, float | None] | None = None,
    ) -> None:
        """A planned request; `worst` is its worst case (output tokens, USD, batch USD), by
        default `max_output_tokens` priced when it is reserved."""
        worst_output, worst_usd, batch_worst_usd = worst or (max_output_tokens, None, None)
        request = NewRequest(
            request_id,
            content_hash,
            endpoint,
            model,
            body,
            input_tokens,
            max_output_tokens,
            first_row,
            worst_output,
            worst_usd,
            batch_worst_usd,
        )
        self.add_planned(run_id, [], [request])
