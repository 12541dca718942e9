"""What each kind of provider can do, known without importing any SDK: the registry, the
planner and the checks ask this before (or without) building a provider."""

from __future__ import annotations

from batchpilot.providers.base import Capabilities

__all__ = ["ANTHROPIC", "GEMINI", "LOCAL", "OPENAI"]

_EVERYTHING = Capabilities(True, True, True, True, True, True, True)

OPENAI: dict[str, Capabilities] = {
    "openai": _EVERYTHING,
    "azure": _EVERYTHING,  # flex in preview; a model without it answers 400
    # an OpenAI-compatible server: its Batch API may be ours (`batchpilot serve`)
    "compatible": Capabilities(
        batch=True, realtime=True, embeddings=True, structured_output=True, images=True
    ),
}
ANTHROPIC = Capabilities(batch=True, realtime=True, structured_output=True, images=True)
GEMINI = Capabilities(batch=True, realtime=True, structured_output=True, images=True)
LOCAL = Capabilities(batch=True, realtime=True, embeddings=True, structured_output=True)
