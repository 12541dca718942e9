"""The machine's counting service: plans in fresh processes share one, build no encoding of
their own, and plan exactly as a planner counting alone; the service ends when idle, a socket
left by a killed one is taken over, and a service that breaks its protocol changes no plan."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpilot import count_service
from batchpilot.count_worker import frame, read_frame
from batchpilot.plan import plan_job
from batchpilot.plan.ahead import CHUNK, WORKER_ENV
from batchpilot.spec import job_from_dict

from helpers import plot_job

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the service listens on a Unix socket")

SPEC = plot_job("shared")

PLAN_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
import batchpilot.tokens as tokens
from batchpilot.plan import plan_job
from batchpilot.spec import job_from_dict
job = job_from_dict(json.loads(sys.argv[1]), base_dir=Path(sys.argv[2]))
plan = plan_job(job).as_json()
print(json.dumps({"plan": plan, "built": tokens._encoding.cache_info().currsize}))
"""


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short cache directory (a socket's path is short everywhere), with the service on;
    any service started in it is stopped at the end."""
    directory = Path(tempfile.mkdtemp(prefix="bp-"))
    monkeypatch.setenv("BATCHPILOT_CACHE_DIR", str(directory))
    monkeypatch.setenv(count_service.SERVICE_ENV, "1")
    monkeypatch.delenv(WORKER_ENV, raising=False)
    try:
        yield directory
    finally:
        pid = count_service.service_pid(count_service.socket_path())
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def _rows(directory: Path, count: int) -> None:
    with (directory / "rows.jsonl").open("w", encoding="utf-8") as handle:
        for index in range(count):
            plot = f"film {index} " * (5 + index % 40) + "the storm ☃ 東京"
            handle.write(json.dumps({"id": f"m{index}", "plot": plot}) + "\n")


def _alone(directory: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The plan of a planner that counts every row itself."""
    with monkeypatch.context() as alone:
        alone.setenv(count_service.SERVICE_ENV, "0")
        alone.setenv(WORKER_ENV, "0")
        plan: dict[str, Any] = plan_job(job_from_dict(SPEC, base_dir=directory)).as_json()
        return plan


def _plan_elsewhere(directory: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PLAN_IN_A_FRESH_PROCESS, json.dumps(SPEC), str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _wait_until(condition: Any, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_plans_in_fresh_processes_share_one_service_and_build_no_encoding(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _rows(tmp_path, 3 * CHUNK + 7)
    alone = _alone(tmp_path, monkeypatch)
    first = _plan_elsewhere(tmp_path)
    path = count_service.socket_path()
    pid = count_service.service_pid(path)
    second = _plan_elsewhere(tmp_path)
    assert first["plan"] == alone and second["plan"] == alone
    assert first["built"] == 0 and second["built"] == 0  # every count came from the service
    assert pid is not None and _running(pid)
    assert count_service.service_pid(path) == pid  # the second plan used the same one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # its owner's alone


def test_the_service_ends_once_idle_and_takes_its_socket_with_it(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(count_service.IDLE_ENV, "0.2")
    connection = count_service.connect()
    assert connection is not None
    path = count_service.socket_path()
    pid = count_service.service_pid(path)
    assert pid is not None
    with connection, connection.makefile("rb") as answers:
        connection.sendall(
            frame(b'[["/v1/embeddings",{"model":"text-embedding-3-small","input":"hi"}]]')
        )
        assert json.loads(read_frame(answers) or b"null") == [[1, True]]
    assert _running(pid)  # not while a planner was connected, however long it took
    assert _wait_until(lambda: not _running(pid))
    assert not path.exists()


def test_a_socket_left_by_a_killed_service_is_taken_over(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _rows(tmp_path, CHUNK + 3)
    connection = count_service.connect()
    assert connection is not None
    connection.close()
    path = count_service.socket_path()
    killed = count_service.service_pid(path)
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    assert _wait_until(lambda: not _running(killed))
    assert path.exists()  # nobody removed it
    answer = _plan_elsewhere(tmp_path)
    assert answer["plan"] == _alone(tmp_path, monkeypatch) and answer["built"] == 0
    taken_over = count_service.service_pid(path)
    assert taken_over not in (None, killed) and _running(taken_over)


@pytest.mark.parametrize("answer", [b"[[1,true]]", b"not json", None])
def test_a_service_that_breaks_its_protocol_changes_no_plan(
    answer: bytes | None, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One listening where the service would (the wrong number of counts, garbage, or a hang
    up after one frame): the planner counts what it was not answered, and plans the same."""
    _rows(tmp_path, 2 * CHUNK + 5)
    alone = _alone(tmp_path, monkeypatch)
    path = count_service.socket_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(path))
    listener.listen(4)
    frames: list[bytes] = []

    def impostor() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as source:
            payload = read_frame(source)
            if payload is not None:
                frames.append(payload)
            if answer is not None:
                connection.sendall(frame(answer))
                while (payload := read_frame(source)) is not None:
                    frames.append(payload)

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    try:
        assert plan_job(job_from_dict(SPEC, base_dir=tmp_path)).as_json() == alone
    finally:
        listener.close()
    thread.join(timeout=60)
    assert frames  # the planner did give it its first chunk


def test_a_socket_path_too_long_for_the_system_means_no_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BATCHPILOT_CACHE_DIR", str(tmp_path / ("x" * 120)))
    monkeypatch.setenv(count_service.SERVICE_ENV, "1")
    assert count_service.connect() is None
    assert not (tmp_path / ("x" * 120)).exists()  # nothing was started


@pytest.mark.parametrize("large", [True, False])
def test_a_large_input_is_counted_by_its_own_process_not_the_service(
    large: bool, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input of `SHARED_BYTES` or more counts on both cores with its own process, as
    without a service: the same plan, and the service neither asked nor started. One under it,
    even past `EAGER_BYTES`, goes to the service alone."""
    from batchpilot.plan import ahead

    _rows(tmp_path, 4 * CHUNK + 9)
    alone = _alone(tmp_path, monkeypatch)
    size = (tmp_path / "rows.jsonl").stat().st_size
    monkeypatch.setattr(ahead, "EAGER_BYTES", 1)
    monkeypatch.setattr(ahead, "SHARED_BYTES", size if large else size + 1)
    started: list[object] = []
    start = ahead.Counter.start.__func__  # type: ignore[attr-defined]

    def recorded(cls: type[ahead.Counter]) -> ahead.Counter | None:
        counter = start(cls)
        started.append(counter)
        return counter

    monkeypatch.setattr(ahead.Counter, "start", classmethod(recorded))
    assert plan_job(job_from_dict(SPEC, base_dir=tmp_path)).as_json() == alone
    if large:
        assert len(started) == 1 and not isinstance(started[0], ahead.SharedCounter)
        assert not count_service.socket_path().exists()
    else:
        assert started == []
        assert count_service.socket_path().exists()


def test_a_service_that_cannot_listen_is_not_waited_for_nor_started_again(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something in the socket's place (a directory here; a file system without sockets
    elsewhere): the service says why it could not listen, the plan counts alone at once, and
    plans in the next minutes do not start one to wait for again."""
    _rows(tmp_path, CHUNK + 3)
    alone = _alone(tmp_path, monkeypatch)
    path = count_service.socket_path()
    path.mkdir(parents=True)
    started = time.monotonic()
    assert plan_job(job_from_dict(SPEC, base_dir=tmp_path)).as_json() == alone
    assert time.monotonic() - started < count_service.START_WAIT
    failure = count_service.failure_path(path)
    assert "could not listen" in failure.read_text(encoding="utf-8")
    pid = count_service.service_pid(path)
    assert pid is not None and _wait_until(lambda: not _running(pid))
    path.rmdir()
    assert count_service.connect() is None  # not tried again so soon
    assert count_service.service_pid(path) == pid  # no other service was started
    failure.unlink()
    connection = count_service.connect()
    assert connection is not None  # tried again once the failure is gone
    connection.close()
    assert not failure.exists()


def test_a_service_that_never_listens_is_waited_for_once(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that starts but never listens (here, the lock it takes is held already): the
    first plan waits `START_WAIT` for it, then says so, and the next does not wait."""
    import fcntl

    monkeypatch.setattr(count_service, "START_WAIT", 0.5)
    path = count_service.socket_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with count_service.lock_path(path).open("a+", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert count_service.connect() is None
        assert "did not listen" in count_service.failure_path(path).read_text(encoding="utf-8")
        started = time.monotonic()
        assert count_service.connect() is None
        assert time.monotonic() - started < 0.25
