"""Providers found by kind: each kind registers a factory and what its providers can do, so
that a job names a kind and nothing else needs to know the kinds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from batchpilot.errors import UserInputError
from batchpilot.providers.base import Capabilities, Provider
from batchpilot.spec.model import ProviderSpec

__all__ = ["Factory", "Kind", "kind", "kinds", "provider_for", "register"]

Factory = Callable[[ProviderSpec, Path, Mapping[str, str] | None], Provider]
"""Builds a provider from a job's ProviderSpec, the job's state directory and the environment
its keys are read from (None: `os.environ`)."""


@dataclass(frozen=True)
class Kind:
    name: str
    factory: Factory
    capabilities: Capabilities


_KINDS: dict[str, Kind] = {}


def register(name: str, factory: Factory, capabilities: Capabilities) -> None:
    """Make providers of kind `name` buildable; registering a kind again replaces it."""
    _KINDS[name] = Kind(name, factory, capabilities)


def kinds() -> tuple[str, ...]:
    """Every registered kind, in the order they were registered."""
    return tuple(_KINDS)


def kind(name: str) -> Kind:
    """The registered kind `name`; a UserInputError naming the known kinds if there is none."""
    found = _KINDS.get(name)
    if found is None:
        raise UserInputError(
            f"no provider of kind {name!r}; the known kinds are {', '.join(_KINDS)}"
        )
    return found


def provider_for(
    spec: ProviderSpec, *, state_dir: Path, environ: Mapping[str, str] | None = None
) -> Provider:
    """The provider a job's ProviderSpec describes.

    `state_dir` is the job's state directory (the local provider keeps its server's state
    under it). Keys are read from `environ` (default `os.environ`).
    """
    return kind(spec.kind).factory(spec, Path(state_dir), environ)
