"""A run held by a lease in a shared store: the worker that holds it renews it while it works,
and stops before doing anything remote once it may have run out.

The lease's expiry is kept on this machine as the time of the last renewal that the store took,
measured before it was asked, plus the lease's length: never later than the store's own expiry.
`fence()` is called before every remote side effect (an upload, a batch's creation) and once a
round: past a third of the lease without a renewal, it raises LeaseLost, so a worker that
stalled (a paused VM, a lost network) never creates a batch that its successor may have created.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from batchpilot.errors import StateError, UserInputError
from batchpilot.store import Store, opening

__all__ = ["DEFAULT_LEASE_S", "PER_RUN_ENV", "LeaseLost", "RunLease", "per_run_limit", "worker_id"]

DEFAULT_LEASE_S = 30.0
PER_RUN_ENV = "BATCHPILOT_PER_RUN"


def per_run_limit(text: str | None, name: str = PER_RUN_ENV) -> int | None:
    """How many processes may drive one run at once, from `text` (`name` says where it came
    from): a positive number, or 0 for any number; 1 when not given."""
    if text is None or not text.strip():
        return 1
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UserInputError(f"{name} must be a whole number >= 0 (0: any number), not {text!r}")
    return None if value == 0 else value


class LeaseLost(StateError):
    """This worker's lease on a run ran out (or was taken): another worker may hold the run."""


def worker_id() -> str:
    """This process's worker id: its host, its pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RunLease:
    """A lease on `run_id` for `worker`, renewed every third of `ttl_s` by a thread of its own.

    `acquire()` takes it (StateError when `per_run` live leases of other workers hold the run;
    None: any number may); `held()` starts renewing one that `Store.claim_run` gave.
    `release()` gives it back. Without `store`, the lease opens (and closes) the store of
    `state_dir` itself.
    """

    def __init__(
        self,
        run_id: str,
        *,
        store: Store | None = None,
        state_dir: Path | None = None,
        worker: str | None = None,
        ttl_s: float = DEFAULT_LEASE_S,
        per_run: int | None = 1,
    ) -> None:
        assert store is not None or state_dir is not None
        self.per_run = per_run
        self.run_id = run_id
        self.worker = worker or worker_id()
        self.ttl_s = ttl_s
        self._store = store
        self._state_dir = state_dir
        self._owns_store = store is None
        self._until = 0.0
        self._done = threading.Event()
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            assert self._state_dir is not None
            self._store = opening.open_store(self._state_dir)
        return self._store

    def acquire(self) -> RunLease:
        started = time.monotonic()
        holder = self.store.take_run(self.run_id, self.worker, self.ttl_s, self.per_run)
        if holder is not None:
            self._close_store()
            raise StateError(
                f"this run is already being run by worker {holder}; wait for it, or stop it first"
            )
        return self._start(started)

    def held(self, taken_at: float) -> RunLease:
        """Renew a lease the store gave at `taken_at` (monotonic time, before it was asked)."""
        return self._start(taken_at)

    def _start(self, taken_at: float) -> RunLease:
        self._until = taken_at + self.ttl_s
        self._thread = threading.Thread(target=self._renew, name="batchpilot-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._done.wait(self.ttl_s / 3):
            asked = time.monotonic()
            try:
                renewed = self.store.renew_lease(self.run_id, self.worker, self.ttl_s)
            except Exception as exc:  # the store is away for now: try again until it runs out
                print(f"batchpilot: renewing the lease on {self.run_id}: {exc}", file=sys.stderr)
                renewed = None
            if renewed:
                self._until = asked + self.ttl_s
            elif renewed is False or time.monotonic() >= self._until:
                self.lost.set()
                return

    def left(self) -> float:
        """Seconds the lease surely has left (0 once it may have run out)."""
        return 0.0 if self.lost.is_set() else max(0.0, self._until - time.monotonic())

    def fence(self) -> None:
        """Raise LeaseLost unless the lease surely holds for a third of its length more."""
        if self.left() < self.ttl_s / 3:
            self.lost.set()
            raise LeaseLost(
                f"worker {self.worker} lost its lease on run {self.run_id} (not renewed in "
                f"time); another worker may have taken the run over"
            )

    def release(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            if not self.lost.is_set():
                self.store.release_run(self.run_id, self.worker)
        finally:
            self._close_store()

    def _close_store(self) -> None:
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
