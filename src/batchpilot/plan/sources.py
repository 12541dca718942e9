"""Where planned items come from: a job's rows through its templates, or a batch JSONL file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batchpilot.data.jsonlines import bounded_lines, parse_json
from batchpilot.data.rows import Row
from batchpilot.errors import UserInputError
from batchpilot.plan.planner import Item
from batchpilot.render import MissingField, RequestRenderer
from batchpilot.spec import JobSpec

__all__ = ["job_items", "requests_file_items"]


def job_items(job: JobSpec, rows: Iterable[Row], renderer: RequestRenderer) -> Iterator[Item]:
    """Render each row; a row missing a field fails the plan or is skipped, per the job."""
    skip = job.limits.on_missing_field == "skip"
    for row in rows:
        try:
            body = renderer.render(row)
        except MissingField as exc:
            if not skip:
                raise
            reason = f"{exc.reason}; skipped (limits.on_missing_field: skip)"
            yield Item(
                row.index, row.id, row.source, job.endpoint, None, skip=reason, data=row.data
            )
            continue
        yield Item(row.index, row.id, row.source, job.endpoint, body, data=row.data, rendered=True)


def requests_file_items(path: Path, model: str | None = None) -> Iterator[Item]:
    """Lines of an OpenAI batch input file, used as they are (custom ids kept); `model`
    replaces each body's model when given."""
    if not path.is_file():
        raise UserInputError(f"{path}: no such file; --requests takes an OpenAI batch JSONL file")
    index = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(bounded_lines(handle, path.name), start=1):
            if not raw.strip():
                continue
            where = f"{path.name}:{number}"
            line: Any = parse_json(raw, where)
            if not isinstance(line, dict):
                raise UserInputError(f"{where}: each line must be a JSON object")
            missing = [k for k in ("custom_id", "url", "body") if k not in line]
            if missing:
                raise UserInputError(
                    f"{where}: missing {', '.join(missing)}; each line needs custom_id, method, "
                    "url and body"
                )
            if not isinstance(line["body"], dict) or "model" not in line["body"]:
                raise UserInputError(f"{where}: body must be an object with a model")
            if line["url"] not in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses"):
                raise UserInputError(
                    f"{where}: url {line['url']!r} is not /v1/chat/completions, /v1/embeddings "
                    "or /v1/responses"
                )
            if line["body"].get("stream"):
                raise UserInputError(f"{where}: stream: true is not allowed in a batch")
            if not isinstance(line["custom_id"], str) or not line["custom_id"]:
                raise UserInputError(f"{where}: custom_id must be a non-empty string")
            custom_id = line["custom_id"]
            if model is not None:
                line["body"]["model"] = model
            yield Item(index, custom_id, where, line["url"], line["body"], custom_id=custom_id)
            index += 1
