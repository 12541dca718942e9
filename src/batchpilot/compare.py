"""One job on several providers, side by side: each provider runs the same rows as a run of its
own, and one export puts each row's answers, statuses and costs next to each other."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpilot.errors import UserInputError
from batchpilot.plan import PlanResult, plan_job
from batchpilot.run import RunResult, run_job
from batchpilot.run.workspace import DEFAULT_STATE_DIR
from batchpilot.spec import JobSpec, load_job

__all__ = ["CompareResult", "Target", "compare_job", "parse_target", "plan_compare"]

KINDS = ("local", "openai", "azure", "compatible", "anthropic", "gemini")


@dataclass(frozen=True)
class Target:
    """A provider kind and a model: "anthropic:claude-haiku-4-5"."""

    kind: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.model}"


@dataclass
class CompareResult:
    output: Path
    runs: dict[str, RunResult]


def parse_target(text: str) -> Target:
    kind, _, model = text.partition(":")
    if kind not in KINDS or not model.strip():
        raise UserInputError(
            f"--provider {text!r}: give KIND:MODEL, KIND one of {', '.join(KINDS)} "
            "(e.g. gemini:gemini-2.5-flash)"
        )
    return Target(kind, model.strip())


def _targets(targets: Sequence[str | Target]) -> list[Target]:
    parsed = [t if isinstance(t, Target) else parse_target(t) for t in targets]
    if len(parsed) < 2:
        raise UserInputError("a comparison needs two providers or more: repeat --provider")
    labels = [t.label for t in parsed]
    if len(set(labels)) != len(labels):
        raise UserInputError(f"--provider names the same provider twice: {', '.join(labels)}")
    return parsed


def _job_for(job_file: Path, target: Target, output: Path | None) -> JobSpec:
    overrides: dict[str, Any] = {"provider.kind": target.kind, "model": target.model}
    if output is not None:
        overrides["output.path"] = str(output)
    job = load_job(job_file, overrides)
    if job.steps is not None:
        raise UserInputError(f"{job_file}: a job with steps cannot be compared; compare one step")
    return job


def plan_compare(job_file: Path, targets: Sequence[str | Target]) -> dict[str, PlanResult]:
    """The job's plan on each provider, by label."""
    return {t.label: plan_job(_job_for(job_file, t, None)) for t in _targets(targets)}


def _export_path(base: Path, target: Target) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", target.label.replace(":", "-"))
    return base.with_name(f"{base.stem}.{slug}.jsonl")


def _read(path: Path | None, label: str) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        raise UserInputError(f"the run on {label} exported nothing to compare")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_job(
    job_file: Path,
    targets: Sequence[str | Target],
    *,
    output: Path | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    poll_interval: float | None = None,
    on_run: Callable[[str, RunResult], None] | None = None,
) -> CompareResult:
    """Run `job_file` on each target (a run each, so a rerun continues them), export each to
    `<output stem>.<kind>-<model>.jsonl`, and join them by row id into `output` (JSONL; by
    default `<job stem>.compare.jsonl` beside the job file): one line per input row, in input
    order, with `answers`, `status` and `cost_usd` keyed by "kind:model"."""
    parsed = _targets(targets)
    job_file = Path(job_file)
    output = Path(output) if output else job_file.with_name(f"{job_file.stem}.compare.jsonl")
    output = output.absolute()
    runs: dict[str, RunResult] = {}
    exported: dict[str, list[dict[str, Any]]] = {}
    # every job is checked before any runs, so a mistake in one leaves the store untouched
    jobs = [(t, _job_for(job_file, t, _export_path(output, t))) for t in parsed]
    for target, job in jobs:
        result = run_job(job, state_dir=state_dir, poll_interval=poll_interval, progress=False)
        runs[target.label] = result
        if on_run is not None:
            on_run(target.label, result)
        exported[target.label] = _read(result.output, target.label)
    by_label = {label: {str(r.get("id")): r for r in rows} for label, rows in exported.items()}
    order = [str(r.get("id")) for r in exported[parsed[0].label]]
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as sink:
        for row_id in order:
            line: dict[str, Any] = {"id": row_id, "answers": {}, "status": {}, "cost_usd": {}}
            for label, rows in by_label.items():
                row = rows.get(row_id, {})
                line["answers"][label] = row.get("output")
                line["status"][label] = row.get("status")
                line["cost_usd"][label] = row.get("cost_usd")
            sink.write(json.dumps(line) + "\n")
    return CompareResult(output=output, runs=runs)
