"""Providers behind one small protocol: OpenAI (and Azure, and compatible servers) and local."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpilot.providers.base import (
    AuthenticationFailed,
    Provider,
    RemoteBatch,
    RemoteFile,
    RemoteNotFound,
    RemoteStatus,
)
from batchpilot.providers.openai import OpenAIProvider, openai_provider
from batchpilot.spec.model import ProviderSpec

if TYPE_CHECKING:
    from batchpilot.providers.local import LocalProvider, local_provider

__all__ = [
    "LOCAL_SERVER_DIR",
    "AuthenticationFailed",
    "LocalProvider",
    "OpenAIProvider",
    "Provider",
    "RemoteBatch",
    "RemoteFile",
    "RemoteNotFound",
    "RemoteStatus",
    "local_provider",
    "openai_provider",
    "provider_for",
]

LOCAL_SERVER_DIR = "local-server"


def __getattr__(name: str) -> Any:
    # The local provider brings the server (uvicorn, starlette) with it: load it on first use.
    if name in ("LocalProvider", "local_provider"):
        return getattr(importlib.import_module("batchpilot.providers.local"), name)
    raise AttributeError(f"module 'batchpilot.providers' has no attribute {name!r}")


def provider_for(
    spec: ProviderSpec, *, state_dir: Path, environ: Mapping[str, str] | None = None
) -> Provider:
    """The provider a job's ProviderSpec describes.

    `state_dir` is the job's state directory; the local provider keeps its server's state in
    `state_dir / "local-server"`. Keys are read from `environ` (default `os.environ`).
    """
    if spec.kind == "local":
        from batchpilot.providers.local import local_provider

        model_path = Path(spec.model_path).expanduser() if spec.model_path else None
        return local_provider(
            Path(state_dir) / LOCAL_SERVER_DIR, responder=spec.responder, model_path=model_path
        )
    return openai_provider(
        base_url=spec.base_url,
        api_key_env=spec.api_key_env,
        organization=spec.organization,
        project=spec.project,
        kind=spec.kind,
        api_version=spec.api_version,
        environ=environ,
    )
