"""A request's worst case: the most output it can produce and the most it can cost.

It is computed once, when the request is planned, and stored with it; both lanes reserve
exactly the stored amount (`reservation`) before sending, and the plan's worst case is the sum.

Output: every choice (`n`) answered in full, each at the smallest bound that applies: the
request's own cap (max_completion_tokens, max_tokens, max_output_tokens), the model's maximum
output (the price table's `max_output_tokens`, or limits.max_output_tokens) and what the context
window leaves after the input. Reasoning tokens are output and count within these caps. Input:
the counted tokens plus the headroom of images whose size is not known before sending, and
ESTIMATE_MARGIN more where the text's count is an estimate (a model whose tokenizer does not
ship offline, such as Claude's and Gemini's, is counted with an OpenAI encoding). An
embeddings request has no output. A request with no bound at all (an unknown model and no
max_tokens) has no worst case; a run under a budget refuses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from batchpilot.plan.models import context_window, is_embedding_model
from batchpilot.pricing import PriceTable
from batchpilot.store import PendingRequest
from batchpilot.tokens import image_headroom

__all__ = [
    "CAP_KEYS",
    "ESTIMATE_MARGIN",
    "Bounds",
    "Worst",
    "bounds_for",
    "choices",
    "output_cap",
    "reservation",
    "worst_case",
    "worst_of",
    "worst_output_tokens",
]

CAP_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")

ESTIMATE_MARGIN = 0.3
"""How much more input an estimated count may be in the worst case: other tokenizers (Claude's
above all) split the same text into up to about a quarter more tokens than o200k does."""


@dataclass(frozen=True)
class Bounds:
    """What bounds a model's answers, when known: its context window and maximum output."""

    context_window: int | None
    max_output_tokens: int | None


@dataclass(frozen=True)
class Worst:
    """The most a request can produce (None: unbounded) and cost, at the standard (real-time)
    and the batch price (None: unknown, for want of a price or of a bound)."""

    output_tokens: int | None
    usd: float | None
    batch_usd: float | None


def bounds_for(
    model: str,
    prices: PriceTable | None,
    *,
    window: int | None = None,
    max_output_tokens: int | None = None,
) -> Bounds:
    """A model's bounds: the job's limits first, then the price table, then the model family."""
    price = prices.price(model) if prices is not None and prices.has(model) else None
    known_window = price.context_window if price is not None else None
    known_most = price.max_output_tokens if price is not None else None
    return Bounds(
        window or known_window or context_window(model),
        max_output_tokens or known_most,
    )


def output_cap(body: dict[str, Any]) -> int | None:
    """The request's own limit on one answer's output tokens."""
    for key in CAP_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def choices(body: dict[str, Any]) -> int:
    """How many answers the request asks for (`n`)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def worst_output_tokens(
    endpoint: str, body: dict[str, Any], input_tokens: int, bounds: Bounds
) -> int | None:
    """Output tokens of every answer at its bound; None when nothing bounds them."""
    model = str(body.get("model", ""))
    return _output(endpoint, model, input_tokens, bounds, output_cap(body), choices(body))


def _output(
    endpoint: str, model: str, input_tokens: int, bounds: Bounds, cap: int | None, n: int
) -> int | None:
    if endpoint.rstrip("/").endswith("/embeddings") or is_embedding_model(model):
        return 0
    caps = [cap for cap in (cap, bounds.max_output_tokens) if cap is not None]
    if bounds.context_window is not None:
        caps.append(max(0, bounds.context_window - input_tokens))
    return min(caps) * n if caps else None


def worst_case(
    endpoint: str,
    body: dict[str, Any],
    input_tokens: int,
    prices: PriceTable | None,
    bounds: Bounds,
    *,
    exact: bool = True,
) -> Worst:
    """The worst case of one request as planned; `exact` False marks `input_tokens` as counted
    with another model's tokenizer, priced ESTIMATE_MARGIN higher."""
    cap, n = output_cap(body), choices(body)
    return worst_of(endpoint, body, input_tokens, prices, bounds, exact=exact, cap=cap, n=n)


def worst_of(
    endpoint: str,
    body: dict[str, Any],
    input_tokens: int,
    prices: PriceTable | None,
    bounds: Bounds,
    *,
    exact: bool,
    cap: int | None,
    n: int,
) -> Worst:
    """`worst_case` given the body's `output_cap` and `choices` (`cap`, `n`)."""
    model = str(body.get("model", ""))
    output = _output(endpoint, model, input_tokens, bounds, cap, n)
    if output is None or prices is None or not prices.has(model):
        return Worst(output, None, None)
    tokens = input_tokens if exact else math.ceil(input_tokens * (1 + ESTIMATE_MARGIN))
    tokens += image_headroom(body, endpoint)
    priced = output if prices.price(model).output is not None else 0
    return Worst(
        output,
        prices.cost(model, input_tokens=tokens, output_tokens=priced, batch=False),
        prices.cost(model, input_tokens=tokens, output_tokens=priced, batch=True),
    )


def reservation(request: PendingRequest, prices: PriceTable | None, *, batch: bool) -> float:
    """What a lane holds for `request` until it ends: its stored worst case (or, should the
    job's prices have gone up since it was planned, its stored tokens at today's prices). A
    request planned before worst cases were stored is priced from its stored output bound; one
    with no worst case holds nothing (a run under a budget refuses such requests first)."""
    stored = request.batch_worst_usd if batch else request.worst_usd
    output = request.worst_output_tokens
    if output is None or prices is None or not prices.has(request.model):
        return stored or 0.0
    if request.endpoint.endswith("/embeddings") or prices.price(request.model).output is None:
        output = 0
    now = prices.cost(
        request.model, input_tokens=request.input_tokens, output_tokens=output, batch=batch
    )
    return now if stored is None else max(stored, now)
