"""The job specification: a YAML file or the same thing built in Python."""

from __future__ import annotations

from batchpilot.spec.load import ENVIRONMENT, job_from_dict, load_job
from batchpilot.spec.model import (
    BudgetSpec,
    EstimateSpec,
    ImageSpec,
    InputModel,
    JobSpec,
    LimitsSpec,
    MessageSpec,
    OutputSpec,
    PartSpec,
    PromptSpec,
    ProviderSpec,
    RealtimeSpec,
    ResponseSpec,
    StepSpec,
    TargetSpec,
)

__all__ = [
    "ENVIRONMENT",
    "BudgetSpec",
    "EstimateSpec",
    "ImageSpec",
    "InputModel",
    "JobSpec",
    "LimitsSpec",
    "MessageSpec",
    "OutputSpec",
    "PartSpec",
    "PromptSpec",
    "ProviderSpec",
    "RealtimeSpec",
    "ResponseSpec",
    "StepSpec",
    "TargetSpec",
    "job_from_dict",
    "load_job",
]
