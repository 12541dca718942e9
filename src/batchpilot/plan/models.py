"""Facts about models that the planner's lint needs: context windows and endpoint kinds."""

from __future__ import annotations

import functools

__all__ = ["context_window", "is_embedding_model"]

# Input + output tokens a request may use, by model family (longest prefix wins).
_CONTEXT: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.5": 128_000,
    "gpt-5": 400_000,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "text-embedding-3": 8_192,
    "text-embedding-ada-002": 8_192,
    "smollm2": 8_192,
    "local": 8_192,
}


@functools.cache
def context_window(model: str) -> int | None:
    """The model's context window in tokens, or None when unknown."""
    matches = [prefix for prefix in _CONTEXT if model.startswith(prefix)]
    return _CONTEXT[max(matches, key=len)] if matches else None


@functools.cache
def is_embedding_model(model: str) -> bool:
    return "embedding" in model or model.startswith("text-similarity")
