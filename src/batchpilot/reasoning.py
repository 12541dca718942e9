"""Reasoning models (the o-series, the gpt-5 family): what their requests may carry.

They take `max_completion_tokens` (which counts their reasoning tokens too), not `max_tokens`;
they refuse sampling parameters (`temperature`, `top_p`, penalties, `logprobs`, `logit_bias`);
and they take `reasoning_effort` (Chat Completions), `reasoning.effort` in the Responses API.
A job's rendered requests are fitted to that, each change a warning once per model; a request
given as it is (a requests file) is left alone, and what the API would refuse is an error.
"""

from __future__ import annotations

import re
from typing import Any

from batchpilot.pricing import PriceTable

__all__ = [
    "EFFORTS",
    "SAMPLING",
    "fit_reasoning",
    "is_reasoning_model",
    "reasoning_problems",
    "thinking_tokens",
]

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
SAMPLING = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
)
_NAMES = re.compile(
    r"^(o\d+(-mini|-pro)?|gpt-5(\.\d+)?(-mini|-nano|-pro|-codex)?)(-\d{4}-\d{2}-\d{2})?$"
)


def is_reasoning_model(model: str, prices: PriceTable | None = None) -> bool:
    """Whether `model` reasons: the price table's `reasoning` flag, else its name."""
    if prices is not None and prices.has(model) and prices.price(model).reasoning:
        return True
    return bool(_NAMES.match(model))


_THINKING = {"none": 0, "minimal": 0, "low": 32, "medium": 128, "high": 512, "xhigh": 1024}


def thinking_tokens(effort: object) -> int:
    """The reasoning tokens the local server's synthetic answers spend at `effort` (default
    medium): a stand-in, so that reasoning shows in usage and in cost."""
    return _THINKING.get(effort if isinstance(effort, str) else "medium", _THINKING["medium"])


def reasoning_problems(endpoint: str, body: dict[str, Any], reasoning: bool) -> list[str]:
    """What the API would refuse in `body` as it is, for a reasoning model or another."""
    if not reasoning:
        if "reasoning_effort" in body or "reasoning" in body:
            key = "reasoning_effort" if "reasoning_effort" in body else "reasoning"
            return [
                f"{key} is for reasoning models (the o-series, the gpt-5 family); "
                f"'{body.get('model')}' is not one: remove it"
            ]
        return []
    problems = []
    if endpoint == "/v1/chat/completions" and "max_tokens" in body:
        problems.append(
            f"'{body.get('model')}' is a reasoning model: it takes max_completion_tokens "
            "(which counts its reasoning tokens), not max_tokens"
        )
    sampling = [key for key in SAMPLING if key in body]
    if sampling:
        problems.append(
            f"'{body.get('model')}' is a reasoning model: it refuses {', '.join(sampling)}; "
            "remove them"
        )
    return problems


def fit_reasoning(endpoint: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A rendered body fitted to a reasoning model, with what was changed: `max_tokens` sent
    as `max_completion_tokens`, sampling parameters dropped, and (Responses API)
    `reasoning_effort` sent as `reasoning.effort`."""
    notes: list[str] = []
    fitted = dict(body)
    if endpoint == "/v1/chat/completions" and "max_tokens" in fitted:
        value = fitted.pop("max_tokens")
        fitted.setdefault("max_completion_tokens", value)
        notes.append("max_tokens is sent as max_completion_tokens (reasoning tokens count in it)")
    dropped = [key for key in SAMPLING if key in fitted]
    for key in dropped:
        del fitted[key]
    if dropped:
        notes.append(f"{', '.join(dropped)} dropped: a reasoning model refuses them")
    if endpoint == "/v1/responses" and "reasoning_effort" in fitted:
        effort = fitted.pop("reasoning_effort")
        given = fitted.get("reasoning")
        fitted["reasoning"] = {**(given if isinstance(given, dict) else {}), "effort": effort}
        notes.append("reasoning_effort is sent as reasoning.effort (the Responses API's name)")
    return fitted, notes
