"""One counting process for every planner of a user on a machine.

Building the o200k encoding from its ranks takes a process most of a second of CPU, more than
a plan of a few thousand rows spends on everything else it counts. So planners share one
process that keeps its encodings built: it listens on a Unix socket in the user's token cache
(`rank_cache.cache_dir()`, readable by its owner alone), answers each connection with the
framed protocol of `batchpilot.count_worker`, and ends once no planner has used it for
`IDLE_SECONDS` (`BATCHPILOT_COUNT_SERVICE_IDLE`).

A planner that finds no service starts one, detached, and connects once it listens. The socket
is named after what decides a count (batchpilot's version, its counting modules, tiktoken's
version and the interpreter), so a planner never asks a service built from other code. A lock
file beside the socket, held while the service lives, lets one service at a time listen.
Anywhere the service cannot be reached (Windows, a socket path too long for the system, a
service that does not start in time) the planner counts as it did without it; a service that
could not listen leaves why beside its socket, and plans do not start one again for
`RETRY_AFTER` seconds.
`BATCHPILOT_COUNT_SERVICE=0` never uses it.

Run as `python -m batchpilot.count_service SOCKET`: it forks the service and ends at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from batchpilot.count_worker import answer, read_frame

__all__ = [
    "IDLE_ENV",
    "SERVICE_ENV",
    "connect",
    "failure_path",
    "lock_path",
    "service_pid",
    "socket_path",
]

SERVICE_ENV = "BATCHPILOT_COUNT_SERVICE"
"""`0`: plans never use (or start) the shared counting process."""
IDLE_ENV = "BATCHPILOT_COUNT_SERVICE_IDLE"
IDLE_SECONDS = 300.0
START_WAIT = 5.0
"""Seconds a planner waits for a service it started to listen, before it counts alone."""
RETRY_AFTER = 600.0
"""Seconds after a service could not be started during which plans do not try again."""
_MAX_PATH = 100  # sockaddr_un holds 104 to 108 bytes, depending on the system
_KEYED = ("__init__.py", "tokens.py", "rank_cache.py", "count_worker.py", "count_service.py")


def enabled() -> bool:
    return os.name == "posix" and os.environ.get(SERVICE_ENV, "") != "0"


def socket_path() -> Path:
    """Where the service for this code listens."""
    from batchpilot.rank_cache import cache_dir

    return cache_dir() / f"count-{_key()}.sock"


def lock_path(socket_file: Path) -> Path:
    """The lock its service holds while it lives; it holds the service's process id."""
    return socket_file.with_suffix(".lock")


def failure_path(socket_file: Path) -> Path:
    """Why the last service for `socket_file` could not listen, while plans count alone."""
    return socket_file.with_suffix(".failed")


def _failed_lately(socket_file: Path, since: float) -> bool:
    """Whether a service for `socket_file` failed to start after `since` (a wall time)."""
    try:
        return failure_path(socket_file).stat().st_mtime >= since
    except OSError:
        return False


def _fail(socket_file: Path, why: str) -> None:
    with contextlib.suppress(OSError):
        failure_path(socket_file).write_text(why + "\n", encoding="utf-8")


def service_pid(socket_file: Path) -> int | None:
    """The process id of the service that listens (or last listened) at `socket_file`."""
    try:
        return int(lock_path(socket_file).read_text(encoding="ascii").strip() or "x")
    except (OSError, ValueError):
        return None


def _key() -> str:
    import tiktoken

    package = Path(__file__).parent
    parts = [sys.executable, sys.version, getattr(tiktoken, "__version__", "?")]
    for name in _KEYED:
        try:
            stat = (package / name).stat()
        except OSError:
            continue
        parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    from batchpilot import __version__

    parts.append(__version__)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def connect() -> socket.socket | None:
    """A connection to the machine's counting service, started if need be; None where there
    is none to be had."""
    if not enabled():
        return None
    try:
        path = socket_path()
    except Exception:  # no tiktoken, no home: the planner meets it where it counts
        return None
    if len(os.fsencode(path)) > _MAX_PATH:
        return None
    connection = _connect(path)
    if connection is not None:
        return connection
    # A service that could not listen lately will not now: each plan would wait for it.
    started = time.time()
    if _failed_lately(path, started - RETRY_AFTER) or not _start(path):
        return None
    deadline = time.monotonic() + START_WAIT
    pause = 0.005
    while time.monotonic() < deadline:
        time.sleep(pause)
        connection = _connect(path)
        if connection is not None:
            return connection
        if _failed_lately(path, started - 1.0):  # the file system's clock is coarse
            return None
        pause = min(pause * 2, 0.1)
    _fail(path, f"the service did not listen within {START_WAIT:g} s")
    return None


def _connect(path: Path) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(os.fspath(path))
    except OSError:
        client.close()
        return None
    return client


def _start(path: Path) -> bool:
    """Start a service for `path`, detached; whether it could be started."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return False
    package_root = os.fspath(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "batchpilot.count_service", os.fspath(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=env,
            start_new_session=True,  # it outlives the planner, and the planner's Ctrl-C
        )
    except (OSError, ValueError):
        return False
    try:  # the launcher forks the service and ends, so the planner leaves no child behind
        return launcher.wait(timeout=START_WAIT) == 0
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()
        return False


class _Service:
    """The listening side: a thread per connection, and an end once idle."""

    def __init__(self, path: Path, idle: float) -> None:
        self.path = path
        self.idle = idle
        self.active = 0
        self.last_used = time.monotonic()
        self.guard = threading.Lock()

    def run(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with lock_path(self.path).open("a+", encoding="ascii") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another service listens here, or is starting to
            lock.seek(0)
            lock.truncate()
            lock.write(str(os.getpid()))
            lock.flush()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._listen(listener)
            except OSError as exc:
                listener.close()
                _fail(self.path, f"the service could not listen at {self.path}: {exc}")
                return
            with contextlib.suppress(FileNotFoundError):
                failure_path(self.path).unlink()
            try:
                self._accept(listener)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                listener.close()

    def _listen(self, listener: socket.socket) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a service that was killed
        old_mask = os.umask(0o177)
        try:
            listener.bind(os.fspath(self.path))
        finally:
            os.umask(old_mask)
        listener.listen(64)

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(min(self.idle, 5.0))
        while True:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                with self.guard:
                    if self.active == 0 and time.monotonic() - self.last_used >= self.idle:
                        return
                continue
            with self.guard:
                self.active += 1
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        # Frames are read as they come, on a thread of their own, while the last one is
        # counted: a planner sending a large chunk never waits for the count before it.
        frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

        def read(source: BinaryIO) -> None:
            try:
                while (payload := read_frame(source)) is not None:
                    frames.put(payload)
            except OSError:
                pass
            finally:
                frames.put(None)

        try:
            with connection, connection.makefile("rb") as source, connection.makefile("wb") as sink:
                threading.Thread(target=read, args=(source,), daemon=True).start()
                while (payload := frames.get()) is not None:
                    sink.write(answer(payload))
                    sink.flush()
        except OSError:
            pass  # the planner went away
        finally:
            with self.guard:
                self.active -= 1
                self.last_used = time.monotonic()


def _idle_seconds() -> float:
    try:
        return max(0.05, float(os.environ.get(IDLE_ENV, IDLE_SECONDS)))
    except ValueError:
        return IDLE_SECONDS


def _detached(path: Path) -> None:
    """Fork the service and end: the service is nobody's child to wait for."""
    if os.fork() > 0:
        os._exit(0)
    with contextlib.suppress(KeyboardInterrupt):
        _Service(path, _idle_seconds()).run()


if __name__ == "__main__":
    _detached(Path(sys.argv[1]))
