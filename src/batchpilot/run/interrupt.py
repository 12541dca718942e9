"""Ctrl-C while a run goes: the first stops it after the current step, the second also
cancels its remote batches."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["Interrupt"]


class Interrupt:
    """Ctrl-C handling: the first finishes the current step and stops; the second also cancels
    the remote batches. `wake` ends the runner's wait (also set by real-time answers)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.cancel = threading.Event()
        self.wake = threading.Event()
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.cancel.set()
        self.stop.set()
        self.wake.set()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
