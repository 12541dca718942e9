"""A client nobody here wrote: litellm's file and batch functions against `batchpilot serve`,
over HTTP, with only the base URL changed. Slow: importing litellm alone takes seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from helpers import serve_process

pytestmark = [
    pytest.mark.slow,
    # litellm's own models and imports warn; the test is about what goes over the wire
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]


def test_litellm_files_and_batches_run_against_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of prices at import
    litellm = pytest.importorskip("litellm")
    process, root = serve_process(tmp_path, "--time-scale", "1000")
    try:
        where = {"custom_llm_provider": "openai", "api_base": f"{root}/v1", "api_key": "any"}
        lines = [
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"question {i}"}],
                    "max_tokens": 8,
                },
            }
            for i in range(3)
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        uploaded = litellm.create_file(file=data, purpose="batch", **where)
        assert uploaded.id.startswith("file-") and uploaded.purpose == "batch"
        batch = litellm.create_batch(
            completion_window="24h",
            endpoint="/v1/chat/completions",
            input_file_id=uploaded.id,
            metadata={"owner": "litellm"},
            **where,
        )
        deadline = time.monotonic() + 120
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, f"batch still {batch.status}"
            time.sleep(0.1)
            batch = litellm.retrieve_batch(batch_id=batch.id, **where)
        assert batch.status == "completed" and batch.metadata == {"owner": "litellm"}
        assert batch.request_counts.completed == 3
        content = litellm.file_content(file_id=batch.output_file_id, **where)
        answers = [json.loads(line) for line in content.content.decode().splitlines()]
        assert sorted(a["custom_id"] for a in answers) == ["q0", "q1", "q2"]
        assert {a["response"]["status_code"] for a in answers} == {200}
        listed = litellm.list_batches(limit=10, **where)
        assert batch.id in [b.id for b in listed.data]
        ledger = httpx.get(f"{root}/_batchpilot/ledger").json()
        rows = ledger["executions"] if isinstance(ledger, dict) else ledger
        assert sorted(row["custom_id"] for row in rows) == ["q0", "q1", "q2"]
    finally:
        process.terminate()
        process.wait(timeout=30)
