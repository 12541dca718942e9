"""Prompt caching as OpenAI describes it, for the synthetic responder: a prompt of 1,024 tokens
or more whose beginning an earlier request of the same model already sent is partly cached; the
cached part is the longest such beginning, 1,024 tokens and then steps of 128. Answers report it
in `usage.prompt_tokens_details.cached_tokens` (`input_tokens_details` in the Responses API),
and it is billed at the cached-input price.

Prefixes are read from the messages' text as the model's tokenizer splits it; what is
remembered is a digest per step, at most `capacity` of them (the oldest go first).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

from batchpilot.tokens import encoding_name_for_model, get_encoding

__all__ = ["MIN_CACHED", "STEP", "PromptCache"]

MIN_CACHED = 1024
STEP = 128


class PromptCache:
    """The beginnings of prompts seen so far, per model."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def cached_tokens(self, model: str, messages: list[Any], prompt_tokens: int) -> int:
        """How many of the prompt's `prompt_tokens` are cached; remembers this prompt's steps."""
        if prompt_tokens < MIN_CACHED:
            return 0
        text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        tokens = get_encoding(encoding_name_for_model(model)[0]).encode_ordinary(text)
        digest = hashlib.sha256(model.encode() + b"\0")
        steps: list[tuple[int, bytes]] = []
        done = 0
        for end in range(MIN_CACHED, min(len(tokens), prompt_tokens) + 1, STEP):
            digest.update(json.dumps(tokens[done:end]).encode())
            steps.append((end, digest.copy().digest()))
            done = end
        cached = 0
        with self._lock:
            for end, key in steps:
                if key in self._seen:
                    cached = end
                    self._seen.move_to_end(key)
                else:
                    self._seen[key] = None
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        return cached
