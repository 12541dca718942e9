"""Packing requests into batches under every limit at once, in input order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["BatchLimits", "PackedBatch", "Packer"]


@dataclass(frozen=True)
class BatchLimits:
    """Upper bounds for one batch. `bytes` counts each line and its newline."""

    requests: int = 50_000
    bytes: int = 190_000_000
    tokens: int | None = None


@dataclass
class PackedBatch:
    index: int
    model: str
    endpoint: str = "/v1/chat/completions"
    requests: int = 0
    bytes: int = 0
    input_tokens: int = 0
    first_row: int | None = field(default=None)

    def as_dict(self) -> dict[str, int | str | None]:
        return {
            "index": self.index,
            "model": self.model,
            "endpoint": self.endpoint,
            "requests": self.requests,
            "bytes": self.bytes,
            "input_tokens": self.input_tokens,
        }


class Packer:
    """Next-fit packing, one open batch per model: memory stays flat and order is kept.

    A request larger than a limit on its own still gets a batch of its own; the planner's lint
    reports it, since no provider will accept it.
    """

    def __init__(
        self, limits: BatchLimits, tokens_for: Callable[[str], int | None] | None = None
    ) -> None:
        self.limits = limits
        self.batches: list[PackedBatch] = []
        self._open: dict[tuple[str, str], PackedBatch] = {}
        self._tokens_for = tokens_for

    def token_limit(self, model: str) -> int | None:
        """Input tokens one batch of `model` may hold: the fixed limit, else the model's own."""
        if self.limits.tokens is not None or self._tokens_for is None:
            return self.limits.tokens
        return self._tokens_for(model)

    def _fits(self, batch: PackedBatch, size: int, tokens: int) -> bool:
        limits = self.limits
        if batch.requests == 0:
            return True
        if batch.requests + 1 > limits.requests or batch.bytes + size > limits.bytes:
            return False
        cap = self.token_limit(batch.model)
        return cap is None or batch.input_tokens + tokens <= cap

    def add(
        self,
        model: str,
        size: int,
        tokens: int,
        row: int | None = None,
        endpoint: str = "/v1/chat/completions",
    ) -> PackedBatch:
        """Place one request; returns the batch it went into (one model and endpoint each)."""
        key = (endpoint, model)
        batch = self._open.get(key)
        if batch is None or not self._fits(batch, size, tokens):
            batch = PackedBatch(len(self.batches), model, endpoint, first_row=row)
            self.batches.append(batch)
            self._open[key] = batch
        batch.requests += 1
        batch.bytes += size
        batch.input_tokens += tokens
        return batch
