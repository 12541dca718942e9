"""Prometheus metrics of every run in a store, read from the store at each scrape.

`batchpilot ui` serves them at `/metrics` when the `metrics` extra (prometheus-client) is
installed; without it that page says which extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from batchpilot.errors import MissingDependency
from batchpilot.run.status import run_status
from batchpilot.store import Store

__all__ = ["metrics_page"]

EXTRA = "pip install 'batchpilot[metrics]'"


def _families(store: Store) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    run = ["run", "job"]
    requests = GaugeMetricFamily(
        "batchpilot_requests", "Requests by state.", labels=[*run, "state"]
    )
    batches = GaugeMetricFamily("batchpilot_batches", "Batches by state.", labels=[*run, "state"])
    spent = GaugeMetricFamily("batchpilot_spent_usd", "USD spent (every try).", labels=run)
    reserved = GaugeMetricFamily(
        "batchpilot_reserved_usd", "USD held for live batches.", labels=run
    )
    budget = GaugeMetricFamily("batchpilot_budget_usd", "The run's budget.", labels=run)
    tokens = GaugeMetricFamily(
        "batchpilot_tokens", "Tokens used (every try).", labels=[*run, "direction"]
    )
    failed = GaugeMetricFamily(
        "batchpilot_failed_tries", "Failed tries by the kind of reason.", labels=[*run, "reason"]
    )
    info = GaugeMetricFamily(
        "batchpilot_run", "1 for each run, by status.", labels=[*run, "status"]
    )
    for record in store.runs():
        status = run_status(store, record.id)
        names = [record.id, record.job_name]
        info.add_metric([*names, record.status], 1)
        for state, count in status.requests.items():
            requests.add_metric([*names, state], count)
        for state, count in status.batches.items():
            batches.add_metric([*names, state], count)
        spent.add_metric(names, status.spent_usd)
        reserved.add_metric(names, status.reserved_usd)
        if status.budget_usd is not None:
            budget.add_metric(names, status.budget_usd)
        tokens.add_metric([*names, "in"], status.input_tokens)
        tokens.add_metric([*names, "out"], status.output_tokens)
        for reason, count in status.failures.items():
            failed.add_metric([*names, reason], count)
    yield from (info, requests, batches, spent, reserved, budget, tokens, failed)


def metrics_page(store: Store) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        raise MissingDependency(
            f"metrics need prometheus-client, which is not installed: {EXTRA}"
        ) from None

    class _Collector:
        def collect(self) -> Iterator[Any]:
            return _families(store)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
