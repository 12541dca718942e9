"""The job each step of a multi-step job runs."""

from __future__ import annotations

from batchpilot.spec.model import JobSpec, StepSpec

__all__ = ["step_job"]


def step_job(job: JobSpec, step: StepSpec) -> JobSpec:
    """The pipeline's settings with the step's prompt, schema and validators (and its model
    and params when it sets them); no output of its own: the pipeline writes one."""
    return job.model_copy(
        update={
            "name": f"{job.name}.{step.name}"[:64],
            "model": step.model or job.model,
            "prompt": step.prompt,
            "params": step.params if step.params is not None else job.params,
            "response": step.response,
            "validators": step.validators or [],
            "steps": None,
            "output": None,
            "fallback": None,
        }
    )
