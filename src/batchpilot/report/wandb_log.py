"""A run's report sent to Weights & Biases: progress, spend, tokens and failures over time, a
summary, and the HTML report itself as an artifact (extra `wandb`).

One W&B run per batchpilot run (per step of a pipeline), named by its run id and grouped by its
job. W&B reads its own key and mode from the environment (`WANDB_API_KEY`, `WANDB_MODE=offline`);
batchpilot never sees or keeps the key.
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path
from typing import Any

from batchpilot.errors import MissingDependency, ProviderUnavailable
from batchpilot.report.facts import RunFacts

__all__ = ["log_to_wandb"]


def _history(facts: RunFacts) -> list[dict[str, float]]:
    """One row per time bin, every series summed up to the end of that bin."""
    series = facts.series
    columns: dict[str, list[float]] = {
        "spent_usd": list(accumulate(series.cost_usd)),
        "tokens_in": [float(v) for v in accumulate(series.input_tokens)],
        "tokens_out": [float(v) for v in accumulate(series.output_tokens)],
    }
    for lane, counts in series.done.items():
        name = "failed_for_good" if lane == "failed" else f"answered/{lane}"
        columns[name] = [float(v) for v in accumulate(counts)]
    return [
        {"minutes": series.width_s * (i + 1) / 60, **{k: v[i] for k, v in columns.items()}}
        for i in range(series.bins)
    ]


def _summary(facts: RunFacts) -> dict[str, Any]:
    status = facts.status
    summary: dict[str, Any] = {
        "status": facts.record.status,
        "spent_usd": status.spent_usd,
        "tokens_in": status.input_tokens,
        "tokens_out": status.output_tokens,
        "elapsed_s": facts.elapsed_s,
        **{f"requests/{state}": n for state, n in status.requests.items()},
        **{f"failed_tries/{kind}": n for kind, n in status.failures.items()},
    }
    if status.budget_usd is not None:
        summary["budget_usd"] = status.budget_usd
    if facts.estimate is not None:
        summary["estimate/cost_usd"] = facts.estimate.cost_usd
        summary["estimate/makespan_s"] = facts.estimate.makespan_s
    return summary


def log_to_wandb(project: str, sections: list[RunFacts], report: Path) -> list[str]:
    """Log each run's history and summary to `project`, with the report as an artifact;
    returns the W&B run ids."""
    try:
        import wandb
    except ImportError:
        raise MissingDependency(
            "--wandb needs wandb, which is not installed: pip install 'batchpilot[wandb]'"
        ) from None
    logged = []
    for facts in sections:
        record = facts.record
        config = {"run_id": record.id, "job": record.job_name, "provider": record.provider}
        try:
            run = wandb.init(
                project=project,
                name=record.id,
                group=record.job_name,
                job_type="batchpilot",
                config=config,
                reinit="create_new",
            )
        except Exception as exc:  # W&B raises its own kinds (login, network, usage)
            raise ProviderUnavailable(
                f"W&B could not start a run in project {project!r}: {exc}"
            ) from None
        try:
            for step, row in enumerate(_history(facts)):
                run.log(row, step=step)
            run.summary.update(_summary(facts))
            artifact = wandb.Artifact(f"report-{record.id}", type="batchpilot-report")
            artifact.add_file(str(report), name=report.name)
            run.log_artifact(artifact)
            logged.append(str(run.id))
        finally:
            run.finish()
    return logged
