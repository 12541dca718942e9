"""`batchpilot.map`: a list in, the answers out, in order, with everything else handled.

answers = batchpilot.map(tweets, prompt="Mask the opinion words: {{ text }}")
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ValidationError

from batchpilot.data import rows_from_dataframe, rows_from_records
from batchpilot.data.frames import is_dataframe
from batchpilot.errors import UserInputError
from batchpilot.export import ExportRow, export_rows
from batchpilot.providers.schema import strict_json_schema
from batchpilot.response_schema import strict_schema_problems
from batchpilot.run.api import run_job
from batchpilot.run.defaults import LOCAL_MODEL, default_provider
from batchpilot.run.workspace import DEFAULT_STATE_DIR, store_at
from batchpilot.spec import job_from_dict

if TYPE_CHECKING:
    import pandas
    import polars

__all__ = ["map"]


def _schema_file(schema: Mapping[str, Any] | type[BaseModel], directory: Path) -> Path:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        data = strict_json_schema(schema)
        name = schema.__name__
    else:
        data, name = dict(schema), "response"
        problems = strict_schema_problems(data)
        if problems:
            raise UserInputError(
                "map(schema=...): the JSON schema does not follow OpenAI's strict "
                "structured-output rules:\n  " + "\n  ".join(problems) + "\nFix the schema, or "
                "pass a pydantic model (its strict schema is built for you)"
            )
    text = json.dumps(data, sort_keys=True)
    path = directory / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(text)
    return path


def _digest(records: list[dict[str, Any]]) -> str:
    text = json.dumps(records, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def map(
    items: Iterable[str | Mapping[str, Any]] | pandas.DataFrame | polars.DataFrame,
    *,
    prompt: str,
    system: str | None = None,
    schema: Mapping[str, Any] | type[BaseModel] | None = None,
    model: str = LOCAL_MODEL,
    provider: str | None = None,
    base_url: str | None = None,
    strategy: str = "batch",
    params: Mapping[str, Any] | None = None,
    budget_usd: float | None = None,
    max_attempts: int = 3,
    fallback: Callable[[Any], Any] | None = None,
    name: str = "map",
    state_dir: Path | str = DEFAULT_STATE_DIR,
    poll_interval: float | None = None,
    progress: bool | None = None,
) -> list[Any]:
    """Answer every item, in order.

    Strings are available to the prompt as `{{ text }}`, mappings (and the rows of a pandas
    or Polars DataFrame) by their keys. With a
    `schema` (a JSON schema or a pydantic model) each answer is parsed (into the model) and
    checked, a model's own validators included (an answer that fails is retried like any
    invalid one); otherwise it is the answer's text. An item that finally fails gets
    `fallback(item)` if given, else None. Running the same call again reuses the answers.
    Ctrl-C stops the run and raises KeyboardInterrupt; calling map again continues it.
    Without a `provider`, the local model's own model runs on it, another model on OpenAI
    (with OPENAI_API_KEY set; without it, an error rather than the local model).
    `progress` shows a progress bar on stderr (None: only when stderr is a terminal).
    """
    provider = provider or default_provider(model, "map")
    if is_dataframe(items):
        records = [row.data for row in rows_from_dataframe(cast(Any, items))]
    else:
        records = [{"text": item} if isinstance(item, str) else dict(item) for item in items]
    state = Path(state_dir)
    job: dict[str, Any] = {
        "name": name,
        "provider": {"kind": provider, **({"base_url": base_url} if base_url else {})},
        "model": model,
        "strategy": strategy,
        "input": {"path": f"(python items {_digest(records)})"},
        "prompt": {"user": prompt, **({"system": system} if system else {})},
        "params": dict(params or {"max_tokens": 256}),
        "limits": {"max_attempts": max_attempts},
        "budget": {"max_usd": budget_usd},
    }
    parse = schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None
    if schema is not None:
        job["response"] = {"schema": str(_schema_file(schema, state / "schemas").resolve())}
    spec = job_from_dict(job, base_dir=state)
    result = run_job(
        spec,
        state_dir=state,
        rows=rows_from_records(records),
        poll_interval=poll_interval,
        response_model=parse,
        progress=progress,
    )
    status = result.status
    if not status.finished:
        raise KeyboardInterrupt(
            f"stopped with {status.done} of {status.total} requests ended; call map again with "
            "the same arguments to continue (nothing answered is sent or paid for again)"
        )
    with store_at(state) as store:
        rows = list(export_rows(store, result.run_id))
    answers: list[Any] = []
    for record, row in zip(records, rows, strict=True):
        answer = _answer(row, schema, parse)
        if answer is _FAILED:
            original = record["text"] if set(record) == {"text"} else record
            answer = fallback(original) if fallback is not None else None
        answers.append(answer)
    return answers


_FAILED = object()


def _answer(row: ExportRow, schema: object, model: type[BaseModel] | None) -> Any:
    """The row's answer, or _FAILED for a row without a usable one."""
    if row.status != "succeeded":
        return _FAILED
    if model is not None:
        try:
            return model.model_validate(row.parsed)
        except ValidationError:
            # An answer reused from an earlier run of the same request was checked then,
            # perhaps against another version of the model's validators.
            return _FAILED
    if schema is not None:
        return row.parsed
    return row.content if row.content is not None else row.embedding
