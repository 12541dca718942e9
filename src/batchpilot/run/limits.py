"""One organisation's limits, shared by every run of a store: which provider account a run
spends from, and reading and setting the account's limits per model (`batchpilot limits`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from batchpilot.errors import UserInputError
from batchpilot.run.identity import without_credentials
from batchpilot.run.workspace import store_at
from batchpilot.spec import ProviderSpec
from batchpilot.store.shared import OrgLimit

__all__ = ["account_of", "account_of_parts", "limit_json", "read_limits", "set_limits"]


def account_of_parts(kind: str, base_url: str | None, organization: str | None) -> str | None:
    """The account a provider spends from: its kind, the base URL it is reached at (when not
    the kind's own, never its credentials or query), and the organization (when named); None
    for the embedded local server, which every run has to itself."""
    if kind == "local":
        return None
    where = None if not base_url else without_credentials(base_url).split("?")[0].rstrip("/")
    account = kind if not where else f"{kind}@{where}"
    return account if not organization else f"{account}/{organization}"


def account_of(provider: ProviderSpec) -> str | None:
    return account_of_parts(provider.kind, provider.base_url, provider.organization)


def read_limits(state_dir: Path) -> list[OrgLimit]:
    with store_at(state_dir) as store:
        return store.limits()


_FIELDS = ("queue_tokens", "rpm", "tpm")


def set_limits(state_dir: Path, account: str, model: str, **changes: int | None) -> OrgLimit:
    """Change some of the account's limits for `model` (the others stay; 0 removes one);
    returns them as they now are."""
    unknown = set(changes) - set(_FIELDS)
    assert not unknown, unknown
    if not account.strip() or not model.strip():
        raise UserInputError("--account and --model must not be empty")
    for name, value in changes.items():
        if value is not None and value < 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be 0 (no limit) or more")
    with store_at(state_dir) as store, store.tx():
        now = next((x for x in store.limits() if (x.account, x.model) == (account, model)), None)
        values: dict[str, Any] = {f: None if now is None else getattr(now, f) for f in _FIELDS}
        for name, value in changes.items():
            if value is not None:
                values[name] = value or None
        store.set_limits(account, model, **values)
        found = next((x for x in store.limits() if (x.account, x.model) == (account, model)), None)
    return found or OrgLimit(account, model)


def limit_json(limit: OrgLimit) -> dict[str, Any]:
    return asdict(limit)
