"""Packing requests into batches under every limit at once, in input order: the plan packs
every request, and a run packs what is still pending with the same code (`pack_next`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["BatchLimits", "PackedBatch", "Packer", "Piece", "Room", "pack_next"]


@dataclass(frozen=True)
class BatchLimits:
    """Upper bounds for one batch. `bytes` counts each line and its newline."""

    requests: int = 50_000
    bytes: int = 190_000_000
    tokens: int | None = None


@dataclass(frozen=True)
class Room:
    """What a batch formed while a run goes must fit in beyond its limits: the input tokens the
    provider's queue has room for, and the money left (None: no bound). Unlike the limits, the
    room binds a batch's first request too: what does not fit waits, or is refused."""

    tokens: int | None = None
    usd: float | None = None

    def holds(self, tokens: int, usd: float) -> bool:
        return (self.tokens is None or tokens <= self.tokens) and (
            self.usd is None or usd <= self.usd
        )


@dataclass(frozen=True)
class Piece:
    """One request as the packer sees it: `size` counts its line and newline, `cost_usd` is
    what a run reserves for it (its worst case)."""

    model: str
    endpoint: str
    size: int
    tokens: int
    cost_usd: float = 0.0


@dataclass
class PackedBatch:
    index: int
    model: str
    endpoint: str = "/v1/chat/completions"
    requests: int = 0
    bytes: int = 0
    input_tokens: int = 0
    first_row: int | None = field(default=None)
    cost_usd: float = 0.0

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
        self,
        limits: BatchLimits,
        tokens_for: Callable[[str], int | None] | None = None,
        room: Room | None = None,
    ) -> None:
        self.limits = limits
        self.room = room or Room()
        self.batches: list[PackedBatch] = []
        self._open: dict[tuple[str, str], PackedBatch] = {}
        self._tokens_for = tokens_for

    def token_limit(self, model: str) -> int | None:
        """Input tokens one batch of `model` may hold: the fixed limit, else the model's own."""
        if self.limits.tokens is not None or self._tokens_for is None:
            return self.limits.tokens
        return self._tokens_for(model)

    def _fits(self, batch: PackedBatch, size: int, tokens: int, cost: float) -> bool:
        limits = self.limits
        if not self.room.holds(batch.input_tokens + tokens, batch.cost_usd + cost):
            return False
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
        cost: float = 0.0,
    ) -> PackedBatch:
        """Place one request; returns the batch it went into (one model and endpoint each)."""
        key = (endpoint, model)
        batch = self._open.get(key)
        if batch is None or not self._fits(batch, size, tokens, cost):
            batch = PackedBatch(len(self.batches), model, endpoint, first_row=row)
            self.batches.append(batch)
            self._open[key] = batch
        batch.requests += 1
        batch.bytes += size
        batch.input_tokens += tokens
        batch.cost_usd += cost
        return batch


def pack_next(
    pieces: Iterable[Piece],
    limits: BatchLimits,
    tokens_for: Callable[[str], int | None] | None = None,
    room: Room | None = None,
) -> PackedBatch | None:
    """The batch a run forms next from what is pending (`pieces`, in input order): the first
    batch the plan's packer fills with the first piece's model and endpoint, within `room` as
    well; its members are the first `requests` pieces of that model and endpoint. None when
    not even the first piece fits the room."""
    packer = Packer(limits, tokens_for, room)
    key: tuple[str, str] | None = None
    for piece in pieces:
        key = key or (piece.model, piece.endpoint)
        if (piece.model, piece.endpoint) != key:
            continue
        if packer.add(
            piece.model, piece.size, piece.tokens, None, piece.endpoint, piece.cost_usd
        ).index:
            break  # the first batch is full
    if not packer.batches:
        return None
    first = packer.batches[0]
    return first if packer.room.holds(first.input_tokens, first.cost_usd) else None
