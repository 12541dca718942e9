"""One process per run: an exclusive lock on a file beside the store."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from batchpilot.errors import StateError, UserInputError

__all__ = ["RunLock", "unusable_state_dir"]


def unusable_state_dir(directory: Path, exc: OSError) -> UserInputError:
    """The error for a state directory that cannot hold a store or its locks."""
    return UserInputError(
        f"{directory}: cannot hold a store ({exc.strerror}); choose another --state"
    )


class RunLock:
    """Held for as long as the process runs the run; the OS releases it if the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+")
        except OSError as exc:
            raise unusable_state_dir(self.path.parent.parent, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateError(
                f"this run is already being run by {holder}; wait for it, or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
