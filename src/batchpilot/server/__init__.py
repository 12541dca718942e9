"""The local OpenAI-compatible server: a test double, the embedded default, a Batch API for any
real-time endpoint.

    with LocalServer(ServerConfig(state_dir=tmp)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="local")
        ...
        server.admin.ledger()
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from batchpilot.errors import ConfigError
from batchpilot.server.app import ServerApp, build_app
from batchpilot.server.clock import VirtualClock
from batchpilot.server.config import RateLimit, ServerConfig
from batchpilot.server.engine import BatchEngine
from batchpilot.server.execution import GEMINI_ENDPOINT
from batchpilot.server.faults import FaultPlan, load_fault_plan
from batchpilot.server.responders.base import Responder
from batchpilot.server.state import ServerState

__all__ = [
    "FaultPlan",
    "LocalServer",
    "RateLimit",
    "ServerAdmin",
    "ServerConfig",
    "load_fault_plan",
    "make_responder",
    "serve",
]

log = logging.getLogger(__name__)


def _count_tokens(body: dict[str, Any], endpoint: str) -> int:
    from batchpilot.server import more_endpoints
    from batchpilot.tokens import count_request

    if endpoint in (
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/videos",
    ):
        return more_endpoints.count_tokens(body, endpoint)
    if endpoint == GEMINI_ENDPOINT:
        from batchpilot.server.gemini_content import chat_body

        model = str(body.get("model") or "").removeprefix("models/")
        request = {k: v for k, v in body.items() if k != "model"}
        return count_request(chat_body(request, model), "/v1/chat/completions").tokens
    return count_request(body, endpoint).tokens


def make_responder(config: ServerConfig) -> Responder:
    """Build the responder named in the configuration."""
    if not isinstance(config.responder, str):
        return config.responder
    if config.responder == "synthetic":
        from batchpilot.server.responders.synthetic import SyntheticResponder

        return SyntheticResponder()
    if config.responder == "llama":
        from batchpilot.server.responders.llama import LlamaResponder

        return LlamaResponder(
            config.model_path,
            n_parallel=max(1, config.responder_threads),
            n_threads=config.model_threads,
        )
    if config.responder == "proxy":
        if not config.upstream:
            raise ConfigError(
                "the proxy responder needs an upstream URL (--upstream http://host:port/v1)"
            )
        from batchpilot.server.responders.proxy import ProxyResponder

        return ProxyResponder(config.upstream, api_key=config.upstream_api_key)
    raise ConfigError(f"unknown responder {config.responder!r}; choose synthetic, llama or proxy")


class ServerAdmin:
    """Direct access to a running server's state, for tests and tools."""

    def __init__(self, state: ServerState, clock: VirtualClock, engine: BatchEngine) -> None:
        self._state = state
        self.clock = clock
        self._engine = engine

    def ledger(self) -> list[dict[str, Any]]:
        """Every request the server executed, oldest first."""
        return self._state.ledger()

    def advance(self, seconds: float) -> float:
        """Move the virtual clock forward; returns the new virtual time."""
        now = self.clock.advance(seconds)
        self._engine.wake()
        return now

    def now(self) -> float:
        return self.clock.now()

    def engine_error(self) -> str | None:
        return self._engine.last_error


class LocalServer:
    """One local server on a loopback port, running in background threads."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state = ServerState(config.state_dir)
        self.state.sweep_files()
        saved = self.state.get_meta("virtual_time")
        self.clock = VirtualClock(config.time_scale, float(saved) if saved else None)
        self.faults = config.faults or FaultPlan()
        self.responder = make_responder(config)
        self.engine = BatchEngine(
            self.state, self.clock, config, self.responder, self.faults, _count_tokens
        )
        self.app = ServerApp(
            config, self.state, self.clock, self.responder, self.faults, self.engine, _count_tokens
        )
        self.admin = ServerAdmin(self.state, self.clock, self.engine)
        self._socket: socket.socket | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:43123/v1."""
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.port}/v1"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}; "
                "choose another --port"
            ) from None
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _uvicorn_server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            build_app(self.app),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_keep_alive=30,
        )
        return uvicorn.Server(config)

    def start(self) -> LocalServer:
        """Start in background threads and wait until the port answers."""
        self._socket = self._bind()
        self.engine.start()
        self._uvicorn = self._uvicorn_server()
        sock = self._socket
        server = self._uvicorn
        self._thread = threading.Thread(
            target=lambda: server.run(sockets=[sock]), name="batchpilot-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local server did not start")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Run in the foreground until interrupted (Ctrl-C or SIGTERM)."""
        self._socket = self._bind()
        self.engine.start()
        self._uvicorn = self._uvicorn_server()
        try:
            self._uvicorn.run(sockets=[self._socket])
        finally:
            self._shutdown()

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._shutdown()

    def _shutdown(self) -> None:
        self.engine.stop()
        self.responder.close()
        if self._socket is not None:
            self._socket.close()
        self.state.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(state_dir: Path | str, **settings: Any) -> Iterator[LocalServer]:
    """Start a local server in-process on a free port; yields it (base_url, admin)."""
    config = ServerConfig(state_dir=Path(state_dir), **settings)
    with LocalServer(config) as server:
        yield server
