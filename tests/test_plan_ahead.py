"""Planning a few chunks ahead, with tokens counted in a second process, gives exactly the plan of
the simple one-row-at-a-time path: ids, lines, token counts, batches, lint, worst cases and
prices; and it does so whatever becomes of the counting process."""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchpilot import count_worker
from batchpilot.plan import (
    BatchLimits,
    Item,
    PlannedRequest,
    Planner,
    PlanResult,
    PlanSettings,
    plan_job,
)
from batchpilot.plan import ahead as ahead_module
from batchpilot.plan.ahead import CHUNK, WORKER_ENV, Counter
from batchpilot.pricing import prices_for
from batchpilot.spec import JobSpec, job_from_dict
from batchpilot.store.seen import SeenKeys
from batchpilot.tokens import count_request

from helpers import plot_job

WORDS = ("the", "a", "sailor", "storm", "île", "naïve", "東京", "☃", "🎬", "dies", "\n\t", '"')
WORDS += ("\\", "42", "0.5")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (700).to_bytes(4, "big") + (300).to_bytes(4, "big")


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def chat(model: str, content: Any, **params: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **params}


def varied_items(seed: int, rows: int) -> Iterator[Item]:
    """Rows of every kind: rendered and given bodies, duplicates of bodies, row ids and custom
    ids, skipped rows, bodies that are wrong or cannot be counted, reasoning models fitted or
    refused, images, embeddings, the Responses API and a model without its own tokenizer."""
    rng = random.Random(seed)
    chat_endpoint = "/v1/chat/completions"
    earlier: list[dict[str, Any]] = []
    for index in range(rows):
        kind = rng.randrange(14)
        row_id = f"row-{rng.randrange(rows)}" if kind == 0 else f"row-{index}"
        source = f"rows.jsonl:{index + 1}"
        endpoint, rendered, custom_id = chat_endpoint, True, None
        body: dict[str, Any] | None
        if kind == 1 and earlier:
            body = rng.choice(earlier)
        elif kind == 2:
            body, skip = None, "the template uses 'plot', which this row does not have"
            yield Item(index, row_id, source, chat_endpoint, None, skip=skip, data={"i": index})
            continue
        elif kind == 3:
            body = chat("o3-mini", text(rng, 20), max_tokens=300, temperature=0.5)
        elif kind == 4:
            rendered, custom_id = False, f"custom-{rng.randrange(rows // 2)}"
            body = chat("gpt-4o", text(rng, 30), max_tokens=50)
        elif kind == 5:
            rendered, custom_id = False, f"bad-{index}"
            body = {"model": "gpt-4o-mini", "messages": []}
        elif kind == 6:
            rendered, custom_id = False, f"reasoning-{index}"
            body = chat("o3-mini", text(rng, 5), max_tokens=10)
        elif kind == 7:
            image = "data:image/png;base64," + base64.b64encode(PNG).decode()
            parts = [
                {"type": "text", "text": text(rng, 8)},
                {"type": "image_url", "image_url": {"url": image, "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ]
            body = chat("gpt-4o-mini", parts, max_tokens=20)
        elif kind == 8:
            endpoint = "/v1/embeddings"
            body = {"model": "text-embedding-3-small", "input": text(rng, rng.randrange(1, 40))}
        elif kind == 9:
            endpoint = "/v1/responses"
            body = {
                "model": "gpt-4o-mini",
                "instructions": text(rng, 4),
                "input": [{"role": "user", "content": text(rng, 12)}],
                "max_output_tokens": 40,
            }
        elif kind == 10:
            body = chat("claude-sonnet-4-5", text(rng, 25), max_tokens=rng.choice([None, 64]))
        elif kind == 11:
            body = chat("gpt-4o-mini", "lone \ud800 surrogate")
        elif kind == 12:
            rendered, custom_id = False, f"toolish-{index}"
            body = chat("mystery-model", text(rng, 6))
        else:
            system = {"role": "system", "content": "List who dies."}
            body = chat("gpt-4o-mini", text(rng, rng.randrange(0, 400)), max_tokens=100, n=2)
            body["messages"].insert(0, system)
        assert body is not None
        earlier.append(body)
        yield Item(
            index,
            row_id,
            source,
            endpoint,
            body,
            custom_id=custom_id,
            data={"i": index},
            rendered=rendered,
        )


class Recorder:
    def __init__(self) -> None:
        self.added: list[tuple[Any, ...]] = []
        self.closed: PlanResult | None = None

    def add(self, planned: PlannedRequest) -> None:
        self.added.append(
            (
                planned.item.index,
                planned.request_id,
                planned.line,
                planned.input_tokens,
                planned.batch,
                planned.new,
                planned.body,
                planned.content_hash,
                planned.worst,
            )
        )

    def close(self, result: PlanResult) -> None:
        self.closed = result


def plan(items: Iterator[Item], *, ahead: bool) -> tuple[dict[str, Any], Recorder, PlanResult]:
    settings = PlanSettings(
        limits=BatchLimits(requests=40, bytes=60_000),
        tokens_per_batch=lambda model: 5_000 if model == "gpt-4o-mini" else None,
        prices=prices_for("openai"),
        budget_usd=10.0,
    )
    sink = Recorder()
    progress: list[int] = []
    result = Planner(settings).plan(items, sink, progress.append, ahead=ahead)
    summary = result.as_json()
    summary["progress"] = progress
    summary["models"] = {name: vars(totals) for name, totals in result.models.items()}
    return summary, sink, result


class Started:
    """The counting processes a test's plans start, and how many counts came back from them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counters: list[Counter] = []
        self.applied = 0
        start, apply = Counter.start.__func__, ahead_module._apply  # type: ignore[attr-defined]
        offer = Counter.offer

        def recorded_start(cls: type[Counter]) -> Counter | None:
            counter = start(cls)
            if counter is not None:
                self.counters.append(counter)
            return counter

        def recorded_apply(given: list[Any], answers: Any) -> bool:
            well_formed: bool = apply(given, answers)
            if well_formed and len(answers) == len(given):
                self.applied += sum(answer is not None for answer in answers)
            return well_formed

        def ready_offer(counter: Counter, rows: list[Any]) -> list[Any] | None:
            given = offer(counter, rows)
            counter.wait_ready()  # the process takes its share however fast the plan goes
            return given

        monkeypatch.setattr(Counter, "start", classmethod(recorded_start))
        monkeypatch.setattr(Counter, "offer", ready_offer)
        monkeypatch.setattr(ahead_module, "_apply", recorded_apply)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Started:
    monkeypatch.setenv(WORKER_ENV, "1")
    return Started(monkeypatch)


@pytest.mark.parametrize(("seed", "rows"), [(1, 6 * CHUNK + 17), (2, CHUNK), (3, 5)])
def test_planning_ahead_gives_the_plan_of_one_row_at_a_time(
    seed: int, rows: int, started: Started
) -> None:
    simple, simple_sink, _ = plan(varied_items(seed, rows), ahead=False)
    ahead, ahead_sink, result = plan(varied_items(seed, rows), ahead=True)
    assert ahead == simple
    assert ahead_sink.added == simple_sink.added
    assert ahead_sink.closed is result
    codes = {finding["code"] for finding in simple["findings"]}
    if rows > CHUNK:  # the rows are as varied as they are meant to be, and counted elsewhere
        assert simple["duplicate_rows"] and simple["skipped_rows"] and len(simple["batches"]) > 3
        assert {"duplicate_row_id", "bad_request", "reasoning_model"} <= codes
        assert {"duplicate_custom_id", "over_queue_limit"} & codes
        assert len(started.counters) == 1 and started.applied > CHUNK
    assert all(counter.process.returncode is not None for counter in started.counters)


def test_planning_ahead_without_the_counting_process_gives_the_same_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_ENV, "0")
    spy = Started(monkeypatch)
    simple, simple_sink, _ = plan(varied_items(4, 3 * CHUNK), ahead=False)
    ahead, ahead_sink, _ = plan(varied_items(4, 3 * CHUNK), ahead=True)
    assert (ahead, ahead_sink.added) == (simple, simple_sink.added)
    assert spy.counters == []


BROKEN_WORKERS = {
    "cannot start": ("/nonexistent/python",),
    "exits at once": (sys.executable, "-c", "import sys; sys.stdin.buffer.read(4)"),
    "answers garbage": (
        sys.executable,
        "-c",
        "import sys\nwhile sys.stdin.buffer.read(1):\n"
        "    sys.stdout.buffer.write(b'\\x02\\x00\\x00\\x00[]'); sys.stdout.flush()",
    ),
    "answers a wrong count beside a malformed one": (
        sys.executable,
        "-c",
        "import json, struct, sys\n"
        "while head := sys.stdin.buffer.read(4):\n"
        "    pairs = json.loads(sys.stdin.buffer.read(struct.unpack('<I', head)[0]))\n"
        "    out = json.dumps([[999999, True]] + ['bad'] * (len(pairs) - 1)).encode()\n"
        "    sys.stdout.buffer.write(struct.pack('<I', len(out)) + out)\n"
        "    sys.stdout.flush()\n",
    ),
    "dies after the warm-up": (
        sys.executable,
        "-c",
        "import sys, struct\nn, = struct.unpack('<I', sys.stdin.buffer.read(4))\n"
        "sys.stdin.buffer.read(n); sys.stdout.buffer.write(b'\\x04\\x00\\x00\\x00[[1'); "
        "sys.stdout.flush()",
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_WORKERS))
def test_a_counting_process_that_fails_leaves_the_plan_as_it_would_be(
    broken: str, started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Counter, "command", BROKEN_WORKERS[broken])
    simple, simple_sink, _ = plan(varied_items(6, 5 * CHUNK), ahead=False)
    ahead, ahead_sink, _ = plan(varied_items(6, 5 * CHUNK), ahead=True)
    assert (ahead, ahead_sink.added) == (simple, simple_sink.added)
    assert started.applied == 0
    assert all(counter.process.returncode is not None for counter in started.counters)


def test_a_count_that_fails_ahead_fails_the_plan_where_it_would_have(started: Started) -> None:
    def items() -> Iterator[Item]:
        for index in range(4 * CHUNK):
            body = chat("gpt-4o-mini", f"row {index}")
            if index == 3 * CHUNK + 3:
                body["messages"][0]["content"] = [{"type": "text", "text": 7}]
            endpoint = "/v1/chat/completions"
            yield Item(index, f"r{index}", f"in:{index}", endpoint, body, rendered=True)

    for ahead in (False, True):
        with pytest.raises(TypeError):
            plan(items(), ahead=ahead)
    assert started.applied > 0


def test_the_counting_process_answers_each_frame_as_count_request_would() -> None:
    good = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a sailor dies"}]}
    part = {"type": "text", "text": 7}
    bad = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [part]}]}
    pairs = [["/v1/chat/completions", good], ["/v1/chat/completions", bad], ["/v1/x", good]]
    source = io.BytesIO(
        count_worker.frame(orjson.dumps(pairs))
        + count_worker.frame(b"[not json")
        + count_worker.frame(b"[]")
        + b"\x09\x00"  # a frame cut short ends the input
    )
    sink = io.BytesIO()
    count_worker.serve(source, sink)
    sink.seek(0)
    decoded = []
    while (payload := count_worker.read_frame(sink)) is not None:
        decoded.append(orjson.loads(payload))
    expected = count_request(good, "/v1/chat/completions")
    assert decoded == [[[expected.tokens, expected.exact], None, None], None, []]


def test_ids_looked_up_together_are_new_exactly_when_one_at_a_time_says_so() -> None:
    rng = random.Random(5)
    keys = [f"id-{rng.randrange(900)}" for _ in range(1300)]
    together, alone = SeenKeys(), SeenKeys()
    try:
        looked_up = [
            first
            for start in (0, 7, 1207)
            for first in together.firsts("rows", keys[start : {0: 7, 7: 1207}.get(start)])
        ]
        assert looked_up == [alone.first("rows", key) for key in keys]
        assert together.firsts("requests", []) == []
    finally:
        together.close()
        alone.close()


def test_a_plan_that_fails_stops_its_counting_process_at_once(started: Started) -> None:
    class Failing(Recorder):
        def add(self, planned: PlannedRequest) -> None:
            if planned.item.index >= 2 * CHUNK:
                raise OSError("disk full")

    settings = PlanSettings(limits=BatchLimits(), tokens_per_batch=lambda model: None)
    failed: OSError | None = None
    try:
        Planner(settings).plan(varied_items(7, 6 * CHUNK), Failing(), ahead=True)
    except OSError as error:
        failed = error  # its traceback keeps the plan's frame alive, and so the process's owner
    assert failed is not None and str(failed) == "disk full"
    (counter,) = started.counters
    assert counter.process.returncode is not None  # ended and waited for


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_counting_process_ends_when_its_planner_is_killed() -> None:
    script = (
        "import time\n"
        "from batchpilot.plan.ahead import Counter\n"
        "counter = Counter.start()\n"
        "print(counter.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    planner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert planner.stdout is not None
    pid = int(planner.stdout.readline())
    assert _running(pid)
    planner.kill()  # as kill -9: no finally, no close
    planner.wait()
    planner.stdout.close()
    deadline = time.monotonic() + 60
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(pid)


def _job_file(tmp_path: Path, rows: int) -> JobSpec:
    with (tmp_path / "rows.jsonl").open("w", encoding="utf-8") as handle:
        for index in range(rows):
            handle.write(json.dumps({"id": f"m{index}", "plot": f"film {index} " * 20}) + "\n")
    return job_from_dict(plot_job("sizes"), base_dir=tmp_path)


@pytest.mark.parametrize("large", [True, False])
def test_a_large_input_starts_the_counting_process_with_its_first_chunk(
    large: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKER_ENV, "0")
    job = _job_file(tmp_path, 3 * CHUNK)
    alone = plan_job(job).as_json()
    monkeypatch.delenv(WORKER_ENV)
    monkeypatch.setattr(ahead_module, "START_AFTER", 3600.0)  # never by the time it counts
    size = (tmp_path / "rows.jsonl").stat().st_size
    monkeypatch.setattr(ahead_module, "EAGER_BYTES", size if large else size + 1)
    started = Started(monkeypatch)
    assert plan_job(job).as_json() == alone
    assert len(started.counters) == (1 if large else 0)
    assert started.applied > 0 if large else started.applied == 0


def test_a_plan_that_has_counted_for_a_while_starts_the_counting_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKER_ENV, "0")
    job = _job_file(tmp_path, 10 * CHUNK)
    alone = plan_job(job).as_json()
    monkeypatch.delenv(WORKER_ENV)
    monkeypatch.setattr(ahead_module, "EAGER_BYTES", 1 << 40)
    monkeypatch.setattr(ahead_module, "START_AFTER", 1e-9)  # any counting past the first chunk
    started = Started(monkeypatch)
    assert plan_job(job).as_json() == alone
    assert len(started.counters) == 1 and started.applied > 0


@pytest.mark.parametrize(("first", "each", "starts"), [(50.0, 1.0, False), (1.0, 1.0, True)])
def test_the_counting_process_starts_once_counting_has_cost_what_its_first_chunk_did(
    first: float, each: float, starts: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunk's count builds the encoding, as a starting process would: a plan whose
    counting after it costs less than that never starts the process."""
    monkeypatch.setenv(WORKER_ENV, "0")
    job = _job_file(tmp_path, 10 * CHUNK)
    alone = plan_job(job).as_json()
    monkeypatch.delenv(WORKER_ENV)
    monkeypatch.setattr(ahead_module, "EAGER_BYTES", 1 << 40)
    counted = ahead_module._count
    calls: list[int] = []

    def timed(*args: object) -> float:
        counted(*args)  # type: ignore[arg-type]
        calls.append(1)
        return first if len(calls) == 1 else each

    monkeypatch.setattr(ahead_module, "_count", timed)
    started = Started(monkeypatch)
    assert plan_job(job).as_json() == alone
    assert len(calls) >= 7  # 10 chunks: enough spent after the first for the second case
    assert len(started.counters) == (1 if starts else 0)
