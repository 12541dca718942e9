"""What a task works out before it touches the store: its settings (as a job's), its run id,
and what its requests share."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batchpilot.errors import ConfigError, TaskError, UserInputError
from batchpilot.plan.job import settings_for
from batchpilot.plan.planner import PlanSettings
from batchpilot.pricing import prices_for
from batchpilot.providers import Capabilities, Provider, kinds
from batchpilot.providers.registry import kind as registered
from batchpilot.run.defaults import LOCAL_MODEL, default_provider
from batchpilot.run.identity import run_id_for
from batchpilot.run.status import RunStatus
from batchpilot.spec import JobSpec, job_from_dict
from batchpilot.task.rounds import RequestDefaults
from batchpilot.task.schema import SchemaBook

__all__ = ["TaskOptions", "TaskSetup", "task_setup"]

_USERINFO = re.compile(r"(?<=://)[^/@]+@")


@dataclass(frozen=True)
class TaskOptions:
    """What a task was constructed with (see Task)."""

    provider: str | Provider | None
    base_url: str | None
    state_dir: Path
    strategy: str
    deadline: str | None
    budget_usd: float | None
    max_attempts: int
    limits: dict[str, Any]
    realtime: dict[str, Any]
    tier: int
    poll_interval: float | None
    fresh: bool
    on_progress: Callable[[RunStatus], None] | None
    progress: bool | None = None


@dataclass(frozen=True)
class TaskSetup:
    """The run a task is, and how its requests are made and planned."""

    name: str
    run_id: str
    spec_json: str
    job: JobSpec  # carries the settings a job would have: provider, limits, budget, strategy
    defaults: RequestDefaults
    plan: PlanSettings


def task_setup(
    name: str,
    model: str | None,
    schema: type[BaseModel] | Mapping[str, Any] | None,
    params: Mapping[str, Any],
    class_path: str,
    options: TaskOptions,
) -> TaskSetup:
    """Check everything a task was given; nothing is sent or stored yet."""
    kind, base_url, capabilities = provider_kind(name, options, model)
    problem = capabilities.check(options.strategy, kind)
    if problem is not None:
        raise TaskError(f"task {name}: {problem}")
    model = model or (LOCAL_MODEL if kind == "local" else None)
    if model is None:
        raise TaskError(f'task {name}: set model (e.g. model = "gpt-4o-mini") on the class')
    data: dict[str, Any] = {
        "name": name,
        "provider": {"kind": kind, "tier": options.tier},
        "model": model,
        "input": {"path": f"(task {name})"},
        "prompt": {"user": "(the task's requests)"},
        "params": dict(params),
        "limits": {"max_attempts": options.max_attempts, **options.limits},
        "budget": {"max_usd": options.budget_usd},
        "strategy": options.strategy,
        "deadline": options.deadline,
        "realtime": options.realtime,
    }
    if base_url is not None:
        data["provider"]["base_url"] = base_url
    try:
        job = job_from_dict(data, base_dir=options.state_dir, environ={}, source=f"task {name}")
    except ConfigError as exc:
        message = str(exc).replace("invalid job:", f"task {name}: invalid settings:")
        raise TaskError(message) from None
    schemas = SchemaBook(name)
    shared = schemas.add(schema) if schema is not None else None
    if kind in ("openai", "compatible"):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    public_url = _USERINFO.sub("", base_url) if base_url and kind != "local" else None
    identity = json.dumps({"task": name, "provider": kind, "base_url": public_url})
    spec = {
        "task": name,
        "class": class_path,
        "provider": kind,
        "base_url": public_url,
        "model": model,
        "params": dict(params),
        "schema": shared.json_schema if shared is not None else None,
        "strategy": options.strategy,
        "deadline": options.deadline,
        "budget_usd": options.budget_usd,
    }
    plan = settings_for(
        job.limits,
        local=kind == "local",
        tier=options.tier,
        prices=prices_for(kind),
        max_output_tokens=job.max_output_tokens,
    )
    return TaskSetup(
        name=name,
        run_id=run_id_for(name, identity),
        spec_json=json.dumps(spec, sort_keys=True),
        job=job,
        defaults=RequestDefaults(name, model, job.params, shared, schemas),
        plan=plan,
    )


def provider_kind(
    name: str, options: TaskOptions, model: str | None = None
) -> tuple[str, str | None, Capabilities]:
    """(kind, base URL, capabilities) of the provider: as given, else as `default_provider`
    chooses."""
    given = options.provider
    if given is None:
        try:
            given = default_provider(model, f"task {name}")
        except UserInputError as exc:
            raise TaskError(str(exc)) from None
    known = kinds()
    if isinstance(given, str):
        if given not in known:
            raise TaskError(
                f"task {name}: provider {given!r} is none of {', '.join(known)} "
                "(or pass a provider object)"
            )
        return given, options.base_url, registered(given).capabilities
    named = given.name if given.name in known else "compatible"
    return named, given.base_url, given.capabilities
