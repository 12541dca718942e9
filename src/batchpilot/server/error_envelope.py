"""Errors answered in another API's envelope: the server makes every error in OpenAI's shape,
and a provider's face rewrites the error answers on its own paths (the key guard's, injected
faults', the shared real-time route's) into that provider's shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Translate", "answer_in_envelope"]

Translate = Callable[[int, Any], dict[str, Any]]
"""An OpenAI error answer's status and body (None when it is not JSON) as the other API's."""


async def answer_in_envelope(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    translate: Translate,
    on_start: Callable[[Message], Message] = lambda message: message,
) -> None:
    """Run `app`, passing answers below 400 through and giving each error answer's body in
    `translate`'s envelope; `on_start` may change every answer's start (its headers)."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def translated(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            message = on_start(message)
            if message["status"] < 400:
                await send(message)
                return
            start = message
            return
        if start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        status = int(start["status"])
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            body = None
        data = json.dumps(translate(status, body)).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    await app(scope, receive, translated)
