"""A task run in its own process, to be killed at random moments by tests/test_task.py.

    python task_crash_worker.py STATE_DIR BASE_URL OUTPUT_JSON

With TASK_KILL_AT=N in the environment, the process SIGKILLs itself inside its Nth on_result.

Round 1 labels every item (a per-request schema); round 2 asks a plain-text follow-up for each
item labelled "neg". `seen` counts how often each result reached the state: any value but 1
would mean a result was lost or applied twice. The final state is written to OUTPUT_JSON; a
run stopped by Ctrl-C exits with 130.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

import batchpilot
from batchpilot.providers import openai_provider

CALLS: list[str] = []
ITEMS = {f"k{i:02d}": f"Item number {i} of the task crash test" for i in range(30)}


class Label(BaseModel):
    label: Literal["pos", "neg", "mixed"]
    score: float


class Triage(batchpilot.Task):
    name = "triage"
    model = "gpt-4o-mini"
    params = {"max_tokens": 24}

    def initial_state(self) -> dict[str, Any]:
        return {"labels": {}, "replies": {}, "failed": {}, "seen": {}, "spent": 0.0}

    def requests(self) -> Any:
        for key, text in ITEMS.items():
            yield batchpilot.TaskRequest(key, text, meta={"text": text}, schema=Label)
        for key, label in self.state["labels"].items():
            if label == "neg":
                yield batchpilot.TaskRequest(f"{key}/reply", f"Write a kind reply to: {key}")

    def on_result(self, result: batchpilot.TaskResult) -> None:
        CALLS.append(result.key)
        if len(CALLS) == int(os.environ.get("TASK_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.005)  # widens the window in which a kill lands inside a delivery
        state = self.state
        state["seen"][result.key] = state["seen"].get(result.key, 0) + 1
        if not result.ok:
            state["failed"][result.key] = (result.error or "").split(":")[0]
        elif result.key.endswith("/reply"):
            state["replies"][result.key.removesuffix("/reply")] = result.text
        else:
            state["labels"][result.key] = result.answer.label


def main() -> int:
    state_dir, base_url, output = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    provider = openai_provider(base_url=base_url, kind="compatible", max_retries=5)
    try:
        report = Triage(
            provider,
            state_dir=state_dir,
            poll_interval=0.05,
            max_attempts=5,
            limits={"requests_per_batch": 4, "queue_tokens": 1_000_000},
        ).run()
    except KeyboardInterrupt:
        return 130
    finally:
        provider.close()
    if not report.finished:
        return 130
    output.write_text(json.dumps(report.state, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
