"""Which requests are Gemini's, and their errors in Google's envelope.

Gemini's API lives under `/v1beta/` and `/upload/`, and under `/v1/` too, where OpenAI's does:
a `/v1/` request is Gemini's when it carries Gemini's key header (`x-goog-api-key`) or client
header (`x-goog-api-client`), as every request of the `google-genai` SDK does. Gemini's
requests are moved under PREFIX, where the server's Gemini routes are; whatever part of the
server answers them with an error (the key guard, injected faults, the shared real-time route)
answers in Google's envelope.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from batchpilot.server.error_envelope import answer_in_envelope
from batchpilot.server.gemini_content import from_openai_error
from batchpilot.server.gemini_files import PREFIX

__all__ = ["GeminiFace", "is_gemini"]

_OWN = ("/v1beta/", "/v1alpha/", "/upload/")
_HEADERS = (b"x-goog-api-key", b"x-goog-api-client")


def is_gemini(scope: Scope) -> bool:
    path = str(scope["path"])
    if path.startswith(_OWN):
        return True
    if not path.startswith("/v1/"):
        return False
    return any(key.lower() in _HEADERS for key, _ in scope.get("headers", []))


class GeminiFace:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_gemini(scope):
            await self.app(scope, receive, send)
            return
        scope = {**scope, "path": PREFIX + str(scope["path"])}
        await answer_in_envelope(self.app, scope, receive, send, from_openai_error)
