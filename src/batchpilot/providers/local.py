"""The local provider: an in-process local server, driven through the SDK over loopback HTTP.

The server keeps its files and batches in its state directory, so a restarted run finds the
batches it created before.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai

from batchpilot.providers.capabilities import LOCAL
from batchpilot.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from batchpilot.server import LocalServer

__all__ = ["CAPABILITIES", "LOCAL_API_KEY", "LocalProvider", "local_provider"]

LOCAL_API_KEY = "local"


CAPABILITIES = LOCAL


class LocalProvider(OpenAIProvider):
    """A provider that owns a started `LocalServer`; `close()` stops it."""

    def __init__(self, server: LocalServer, *, name: str = "local", max_retries: int = 2) -> None:
        client = openai.OpenAI(
            base_url=server.base_url,
            api_key=server.config.api_key or LOCAL_API_KEY,
            max_retries=max_retries,
        )
        super().__init__(client, name=name, capabilities=CAPABILITIES)
        self.server = server

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.server.stop()


def local_provider(
    state_dir: Path,
    *,
    responder: str = "llama",
    model_path: Path | None = None,
    time_scale: float = 1.0,
    slots: int | None = None,
    threads: int | None = None,
    **server_settings: Any,
) -> LocalProvider:
    """Start a local server on a free loopback port with its state in `state_dir`.

    Defaults suit a job without a key: no validation or finalizing delay, and any model name is
    accepted (the responder answers them all). `slots` is how many requests the responder
    answers at once: the llama model's decoding slots, fed by as many of the batch engine's
    threads (default: `default_slots()`, chosen from the machine, for llama; 1 otherwise).
    `threads` is how many CPU threads the llama model computes with (default: llama.cpp's).
    `server_settings` are further `ServerConfig` fields. A missing llama runtime or model
    raises MissingDependency before anything starts.
    """
    from batchpilot.localmodel import default_slots
    from batchpilot.server import LocalServer, ServerConfig, make_responder

    if slots is None:
        slots = default_slots(model_path) if responder == "llama" else 1
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")

    settings: dict[str, Any] = {
        "validation_delay_s": 0.0,
        "finalizing_delay_s": 0.0,
        "models": frozenset({"*"}),
        **server_settings,
    }
    config = ServerConfig(
        state_dir=Path(state_dir),
        responder=responder,
        model_path=model_path,
        time_scale=time_scale,
        responder_threads=slots,
        model_threads=threads,
        **settings,
    )
    # The responder is built first so that a missing model fails before any state is opened.
    instance = make_responder(config)
    try:
        server = LocalServer(dataclasses.replace(config, responder=instance))
    except BaseException:
        instance.close()
        raise
    try:
        server.start()
        return LocalProvider(server)
    except BaseException:
        server.stop()
        raise
