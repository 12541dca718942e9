"""One process per run: an exclusive lock on a file beside the store (`filelock`, so that it
works wherever Python does), with the holder's pid in a file beside it for the message that
refuses a second process."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import filelock

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
        self.holder_path = path.with_name(f"{path.name}.holder")
        self._lock: filelock.BaseFileLock | None = None

    def acquire(self) -> RunLock:
        if self._lock is not None:
            return self
        lock = filelock.FileLock(str(self.path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire(blocking=False)
        except filelock.Timeout:
            raise StateError(
                f"this run is already being run by {self._holder()}; wait for it, or stop it first"
            ) from None
        except OSError as exc:
            raise unusable_state_dir(self.path.parent.parent, exc) from None
        self._lock = lock
        try:
            self.holder_path.write_text(f"pid {os.getpid()}")
        except OSError as exc:
            self.release()
            raise unusable_state_dir(self.path.parent.parent, exc) from None
        return self

    def _holder(self) -> str:
        try:
            return self.holder_path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self.holder_path.unlink()
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
