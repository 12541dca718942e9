"""The responder protocol: what answers a request inside the local server.

A responder turns one request body (chat completion or embeddings) into a full OpenAI-shaped
response object. It knows nothing of batches, faults, ledgers or clocks; the server adds those.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Responder", "ResponderError"]

JSON = dict[str, Any]


class ResponderError(Exception):
    """A request the responder cannot answer, reported as an HTTP error with the API's envelope."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.code = code
        self.param = param

    def envelope(self) -> JSON:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@runtime_checkable
class Responder(Protocol):
    """Answers chat-completion and embeddings request bodies.

    Implementations must be thread-safe: the server calls them from several threads. A responder
    may set a class attribute `blocking = False` when it answers in microseconds; the server then
    calls it on its event loop instead of a worker thread.

    The server answers `/v1/responses` and `/v1/completions` through `chat`, sets every
    timestamp from its own clock, and streams answers itself; a responder with a
    `moderate(body)` method answers `/v1/moderations` (the server scores them otherwise).
    """

    name: str

    def chat(self, body: JSON) -> JSON:
        """Return a complete `chat.completion` object for a `/v1/chat/completions` body.

        The object has `id`, `object`, `created`, `model`, `choices` (each with `index`,
        `message` {role, content, refusal}, `logprobs`, `finish_reason`) and `usage`
        {prompt_tokens, completion_tokens, total_tokens}. Raise ResponderError for bad input.
        """
        ...

    def embed(self, body: JSON) -> JSON:
        """Return a complete embeddings `list` object for a `/v1/embeddings` body."""
        ...

    def close(self) -> None:
        """Release resources (model handles, HTTP clients)."""
        ...
