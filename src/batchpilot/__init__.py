"""batchpilot: run datasets through LLMs, planned, budgeted and crash-safe."""

from __future__ import annotations

from batchpilot.errors import (
    BatchpilotError,
    BudgetExceeded,
    ConfigError,
    IllegalTransition,
    MissingDependency,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    StateError,
    UserInputError,
)

__version__ = "0.1.0"

__all__ = [
    "BatchpilotError",
    "BudgetExceeded",
    "ConfigError",
    "IllegalTransition",
    "MissingDependency",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "StateError",
    "UserInputError",
    "__version__",
]
