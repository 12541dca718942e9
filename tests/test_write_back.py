"""Answers written back into the input records, nested records included, and fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchpilot.errors import UserInputError
from batchpilot.run import run_job
from batchpilot.server import FaultPlan, LocalServer
from batchpilot.spec import job_from_dict


def test_masking_writes_back_into_nested_tweets_with_a_fallback(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(
        validation_delay_s=0,
        finalizing_delay_s=0,
        faults=FaultPlan.model_validate({"seed": 1, "faults": [{"kind": "refusal", "rate": 0.4}]}),
    )
    lines = [
        {"user": "ana", "tweets": [{"text": "I love this film"}, {"text": "boring ending"}]},
        {"user": "bo", "tweets": [{"text": "great cast"}]},
        {"user": "cy", "tweets": []},
    ]
    (tmp_path / "tweets.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "masking.py").write_text(
        "def mask_all(row):\n    return ' '.join('[MASK]' for _ in row['text'].split())\n"
    )
    job = job_from_dict(
        {
            "name": "masking",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "tweets.jsonl", "records": "tweets"},
            "prompt": {"user": "Mask the opinion words: {{ text }}"},
            "params": {"max_tokens": 40},
            "limits": {"max_attempts": 1, "queue_tokens": 10**6},
            "fallback": "masking:mask_all",
            "output": {"path": "masked.jsonl", "response_key": "masked_text"},
        },
        base_dir=tmp_path,
    )
    result = run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert result.status.finished
    written = [json.loads(line) for line in (tmp_path / "masked.jsonl").read_text().splitlines()]
    assert [line["user"] for line in written] == ["ana", "bo", "cy"]
    tweets = [tweet for line in written for tweet in line["tweets"]]
    assert [t["text"] for t in tweets] == ["I love this film", "boring ending", "great cast"]
    assert all(t["masked_text"] for t in tweets)
    masks = [t["masked_text"] for t in tweets if "[MASK]" in t["masked_text"]]
    answers = [t["masked_text"] for t in tweets if t["masked_text"].startswith("Synthetic")]
    assert masks and answers, "the seeded plan refuses some tweets and answers others"
    assert len(masks) + len(answers) == 3
    marked = [error for line in written for error in line.get("_batchpilot_errors", [])]
    assert len(marked) == len(masks), "every fallback item is marked"
    assert {error["status"] for error in marked} == {"fallback"}
    assert all(error["error"].startswith("refused") for error in marked)
    assert all(error["item"].startswith("tweets[") for error in marked)


def test_flat_write_back_with_a_response_key(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(validation_delay_s=0, finalizing_delay_s=0)
    rows: list[dict[str, Any]] = [
        {"image_id": f"img{i}", "url": f"https://x/{i}.png"} for i in range(3)
    ]
    (tmp_path / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = job_from_dict(
        {
            "name": "captions",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "images.jsonl", "id_field": "image_id"},
            "prompt": {
                "user": "Caption this image.",
                "images": [{"field": "url", "detail": "low"}],
            },
            "params": {"max_tokens": 30},
            "limits": {"queue_tokens": 10**6},
            "output": {"path": "captions.jsonl", "response_key": "caption"},
        },
        base_dir=tmp_path,
    )
    run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    written = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [w["image_id"] for w in written] == ["img0", "img1", "img2"]
    assert all(isinstance(w["caption"], str) and w["caption"] for w in written)


def test_a_fallback_that_raises_is_a_clear_error_and_export_works_once_it_is_fixed(
    tmp_path: Path, local_server_factory: Callable[..., LocalServer]
) -> None:
    server = local_server_factory(
        validation_delay_s=0,
        finalizing_delay_s=0,
        faults=FaultPlan.model_validate({"faults": [{"kind": "refusal", "nth": [1]}]}),
    )
    (tmp_path / "rows.jsonl").write_text('{"id": "r1", "text": "I love this film"}\n')
    (tmp_path / "fixes.py").write_text("def mask_all(row):\n    return row['missing']\n")
    job = job_from_dict(
        {
            "name": "fallback-raises",
            "provider": {"kind": "compatible", "base_url": server.base_url},
            "model": "gpt-4o-mini",
            "input": {"path": "rows.jsonl", "id_field": "id"},
            "prompt": {"user": "{{ text }}"},
            "params": {"max_tokens": 20},
            "limits": {"max_attempts": 1, "queue_tokens": 10**6},
            "fallback": "fixes:mask_all",
            "output": {"path": "out.jsonl"},
        },
        base_dir=tmp_path,
    )
    with pytest.raises(UserInputError, match=r"fallback fixes:mask_all raised KeyError: 'missing'"):
        run_job(job, state_dir=tmp_path / "state", poll_interval=0.02)
    assert not (tmp_path / "out.jsonl").exists()
    (tmp_path / "fixes.py").write_text("def mask_all(row):\n    return '[MASK]'\n")
    # a new process imports the fixed module
    command = [sys.executable, "-m", "batchpilot", "export", "--state", str(tmp_path / "state")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert row["status"] == "fallback" and row["output"] == "[MASK]"
