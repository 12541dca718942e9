"""Which run a job is: the job as stored, the part of it that names its run, and run ids.

Running the same job again continues its run: a run id is `<name>-<hash>` of what shapes its
requests. A pipeline's step hashes its own definition and the run ids of the steps before it,
so changing step 1 makes every later step new too.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from batchpilot.spec import JobSpec, StepSpec, job_from_dict
from batchpilot.spec.steps import step_job
from batchpilot.store import RunKind, RunRecord

__all__ = [
    "IDENTITY",
    "StepRun",
    "identity_json",
    "job_of",
    "pipeline_id",
    "requests_identity",
    "run_id_for",
    "spec_json",
    "step_runs",
    "without_credentials",
]

_USERINFO = re.compile(r"(?<=://)[^/@]+@")


def without_credentials(url: str) -> str:
    """`url` without a `user:password@` part."""
    return _USERINFO.sub("", url)


# What shapes the requests and where they go; changing anything else (strategy, deadline,
# budget, limits, output) continues the same run instead of starting another.
IDENTITY = ("name", "provider", "model", "endpoint", "input", "prompt", "params", "response")


def spec_json(job: JobSpec) -> str:
    """The job as stored: everything that shapes its requests and where its files are; never
    a credential (keys live only in the environment; user:password@ is cut from URLs)."""
    data = json.loads(job.model_dump_json(by_alias=True))
    data["base_dir"] = str(job.base_dir.resolve())
    return _USERINFO.sub("", json.dumps(data, sort_keys=True))


def identity_json(job: JobSpec) -> str:
    """The part of the stored job that names its run."""
    data = json.loads(spec_json(job))
    return json.dumps({key: data.get(key) for key in (*IDENTITY, "base_dir")}, sort_keys=True)


def run_id_for(name: str, spec: str) -> str:
    """`<name>-<first 8 hex digits of the spec's SHA-256>`."""
    return f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def requests_identity(
    path: Path, *, kind: str, model: str | None, base_url: str | None
) -> tuple[str, str]:
    """The run id and stored spec of a run of a requests file: the file's content (hashed as
    it streams), the provider and its URL without credentials."""
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    spec = json.dumps(
        {
            "requests": str(path.resolve()),
            "sha256": digest,
            "provider": kind,
            "model": model,
            "base_url": _USERINFO.sub("", base_url) if base_url else None,
        }
    )
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)[:40] or "requests"
    return run_id_for(name, spec), spec


def job_of(run: RunRecord) -> JobSpec | None:
    """The job a run was started from: a pipeline's whole job for each of its steps' runs; None
    for a run of a requests file or of a task."""
    if run.kind not in (RunKind.JOB, RunKind.PIPELINE):
        return None
    data = json.loads(run.spec_json)
    if "requests" in data or "task" in data:  # recorded without its kind
        return None
    base = Path(data.pop("base_dir", "."))
    return job_from_dict(data, base_dir=base, environ={})


class StepRun:
    """One step of a pipeline and the run that holds it."""

    def __init__(self, step: StepSpec, job: JobSpec, run_id: str) -> None:
        self.step = step
        self.job = job
        self.run_id = run_id

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def key(self) -> str:
        """Where the step's answer goes in the pipeline's output."""
        return self.step.response_key or self.step.name


def step_runs(job: JobSpec) -> list[StepRun]:
    """Every step with its job and run id, in order."""
    assert job.steps is not None
    runs: list[StepRun] = []
    for step in job.steps:
        derived = step_job(job, step)
        chain = identity_json(derived) + "".join(run.run_id for run in runs)
        runs.append(StepRun(step, derived, run_id_for(derived.name, chain)))
    return runs


def pipeline_id(runs: list[StepRun]) -> str:
    """The id a pipeline's combined progress is shown under."""
    digest = hashlib.sha256("".join(run.run_id for run in runs).encode()).hexdigest()[:8]
    return f"{runs[0].job.name.rsplit('.', 1)[0]}-{digest}"
