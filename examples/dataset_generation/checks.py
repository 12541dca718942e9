"""Local checks on each generated pair: the dataset keeps only pairs that pass them all."""

from __future__ import annotations

from typing import Any

from batchpilot.tokens import get_encoding

# The dataset is used with models of both tokenizer families, so lengths are checked in both.
ENCODINGS = ("cl100k_base", "o200k_base")
QUESTION_TOKENS = (4, 60)
ANSWER_TOKENS = (4, 120)


def _length_problem(text: str, field: str, bounds: tuple[int, int]) -> str | None:
    low, high = bounds
    for name in ENCODINGS:
        count = len(get_encoding(name).encode(text))
        if not low <= count <= high:
            return f"{field} has {count} {name} tokens, outside {low}-{high}"
    return None


def token_lengths(answer: Any, row: dict[str, Any] | None) -> str | None:
    """None when both texts are within their token bounds under every tokenizer."""
    return _length_problem(answer["question"], "question", QUESTION_TOKENS) or _length_problem(
        answer["answer"], "answer", ANSWER_TOKENS
    )


def distinct(answer: Any, row: dict[str, Any] | None) -> str | None:
    """The answer must not merely repeat the question."""
    if answer["question"].strip().lower() == answer["answer"].strip().lower():
        return "the answer repeats the question"
    return None
