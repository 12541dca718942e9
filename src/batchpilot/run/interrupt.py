"""Ctrl-C while a run goes: the first stops it after the current step, the second also
cancels its remote batches. Each is acknowledged at once on stderr, with what happens next."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["Interrupt", "how_to_continue", "notice"]


def how_to_continue(kind: str | None, run_id: str) -> str:
    """How a stopped run of `kind` (a `RunKind`) continues."""
    if kind == "task":
        return "run the task again"
    if kind == "requests":
        return "the same `batchpilot run --requests FILE` command"
    return f"`batchpilot resume {run_id}`, or run it again"


def notice(presses: int, *, live: int, on_the_wire: int, cancel: bool, resume: str) -> str:
    """What a Ctrl-C does, said when it is pressed: `live` batches run remotely, `on_the_wire`
    real-time requests are in flight, `cancel` (--cancel-on-exit) cancels the batches on the
    first press, and `resume` is how to continue."""
    batches = "1 submitted batch" if live == 1 else f"{live} submitted batches"
    if presses > 1:
        if not live:
            return "Ctrl-C again: stopping; nothing runs remotely."
        return (
            f"Ctrl-C again: {batches} will be cancelled remotely too (what they answered is "
            "kept), then the run stops."
        )
    step = "Ctrl-C: stopping after the current step"
    if on_the_wire:
        wire = (
            "the real-time request on the wire finishes"
            if on_the_wire == 1
            else f"the {on_the_wire} real-time requests on the wire finish"
        )
        step += f" ({wire} first)"
    if not live:
        where = "nothing runs remotely"
    elif cancel:
        where = f"{batches} will be cancelled remotely (what they answered is kept)"
    else:
        keep = "keeps" if live == 1 else "keep"
        where = f"{batches} {keep} running remotely; press Ctrl-C again to cancel them"
    return f"{step}; {where}. To continue: {resume}"


class Interrupt:
    """Ctrl-C handling: the first finishes the current step and stops; the second also cancels
    the remote batches. `wake` ends the runner's wait (also set by real-time answers).
    `say`, when set, gives the line that acknowledges the n-th press (written to stderr)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.cancel = threading.Event()
        self.wake = threading.Event()
        self.say: Callable[[int], str] | None = None
        self._presses = 0
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.cancel.set()
        self.stop.set()
        self.wake.set()
        self._presses += 1
        if self.say is not None:
            try:
                sys.stderr.write(self.say(self._presses) + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # stderr is gone; the run stops all the same

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
