"""The exceptions batchpilot raises, split by who must act.

    BatchpilotError                 root of all that batchpilot raises on purpose
    ├── UserInputError              the job, data or flags are wrong; the message says what to fix
    │   ├── ConfigError             a configuration file (job, faults, server settings) is invalid
    │   └── TaskError               a task's own code raised, or gave what cannot be used
    ├── ProviderError               the provider (remote or local) refused or failed
    │   ├── ProviderUnavailable     could not be reached, or answered 5xx after retries
    │   └── ProviderRejected        answered 4xx: the request itself is wrong
    ├── StateError                  the local store is inconsistent or locked by another process
    │   └── IllegalTransition       a state change not allowed by the state machine
    ├── BudgetExceeded              spending more would pass the hard budget
    ├── MissingDependency           an optional part (extra, model file) is not installed
    └── RequestsFailed              a run ended with requests that failed for good

SDK exceptions never travel past the provider edge; they are translated into these.
"""

from __future__ import annotations

__all__ = [
    "BatchpilotError",
    "BudgetExceeded",
    "ConfigError",
    "IllegalTransition",
    "MissingDependency",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RequestsFailed",
    "StateError",
    "TaskError",
    "UserInputError",
]


class BatchpilotError(Exception):
    """Root of every exception batchpilot raises on purpose."""

    exit_code: int = 1


class UserInputError(BatchpilotError):
    """The user's input is wrong; the message names the place and what to do."""

    exit_code = 2


class ConfigError(UserInputError):
    """A configuration file is invalid."""


class TaskError(UserInputError):
    """A task's code raised or gave something unusable; the store is left as it was."""


class ProviderError(BatchpilotError):
    """The provider refused or failed."""

    exit_code = 3


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or kept failing."""


class ProviderRejected(ProviderError):
    """The provider rejected the request as invalid."""


class StateError(BatchpilotError):
    """The local store is inconsistent or held by another process."""

    exit_code = 4


class IllegalTransition(StateError):
    """A state change that the state machine does not allow."""


class BudgetExceeded(BatchpilotError):
    """More spending would pass the hard budget."""

    exit_code = 5


class MissingDependency(BatchpilotError):
    """An optional component is not installed."""

    exit_code = 6


class RequestsFailed(BatchpilotError):
    """A run ended, but some of its requests failed for good (the command line's verdict on a
    finished run; the Python API reports failures in the run's status instead)."""

    exit_code = 7
