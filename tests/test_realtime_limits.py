"""The real-time lane's own limits end to end: `realtime.timeout` bounds each call, and the
day's requests (`realtime.rpd`) are counted in the store, so a restart does not start afresh."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchpilot.run import RunStatus, open_store, run_job
from batchpilot.server import LocalServer
from batchpilot.server.responders.synthetic import SyntheticResponder
from batchpilot.spec import JobSpec, job_from_dict

Factory = Callable[..., LocalServer]


class SlowFirst(SyntheticResponder):
    """Answers the first chat call only after `seconds`, every later one at once."""

    blocking = True

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._first = threading.Lock()

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._first.acquire(blocking=False):
            time.sleep(self.seconds)
        return super().chat(body)


def make_job(tmp_path: Path, base_url: str, rows: int, **realtime: Any) -> JobSpec:
    lines = [json.dumps({"id": f"r{i}", "text": f"about {i}"}) for i in range(rows)]
    (tmp_path / "input.jsonl").write_text("".join(line + "\n" for line in lines))
    spec: dict[str, Any] = {
        "name": "limits",
        "provider": {"kind": "compatible", "base_url": base_url},
        "model": "gpt-4o-mini",
        "input": {"path": "input.jsonl", "id_field": "id"},
        "prompt": {"user": "{{ text }}"},
        "params": {"max_tokens": 10},
        "strategy": "realtime",
        "realtime": {"rpm": 6000, "concurrency": 1, **realtime},
    }
    return job_from_dict(spec, base_dir=tmp_path)


def test_realtime_timeout_gives_a_slow_call_up_and_tries_again(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory(responder=SlowFirst(4.0), responder_threads=2)
    job = make_job(tmp_path, server.base_url, 2, timeout=1.0)
    assert job.realtime.timeout == 1.0
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.requests["succeeded"] == 2
    store = open_store(tmp_path / "state")
    failures = store.failure_reasons(result.run_id)
    store.close()
    assert set(failures) == {"timeout"}  # the slow call was given up, and tried again


def stop_after(count: int) -> Callable[[RunStatus], None]:
    def check(status: RunStatus) -> None:
        if status.requests.get("succeeded", 0) >= count:
            raise KeyboardInterrupt

    return check


def test_the_days_realtime_requests_are_counted_across_restarts(
    tmp_path: Path, local_server_factory: Factory
) -> None:
    server = local_server_factory()
    job = make_job(tmp_path, server.base_url, 12, rpd=5)
    state = tmp_path / "state"
    with contextlib.suppress(KeyboardInterrupt):
        run_job(job, state_dir=state, poll_interval=0.02, on_progress=stop_after(3))
    sent = len(server.admin.ledger())
    assert 3 <= sent <= 5
    # the day has room for 5 - sent more: a second process must not start with a full day
    until = time.monotonic() + 3
    waits: list[str] = []

    def watch(status: RunStatus) -> None:
        waits.extend(status.waiting)
        if time.monotonic() > until:
            raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        run_job(job, state_dir=state, poll_interval=0.02, on_progress=watch)
    assert len(server.admin.ledger()) == 5, "the second process sent past the day's 5"
    assert waits and waits[-1].startswith("the day's 5 real-time requests are used up")
