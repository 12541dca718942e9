"""Providers behind two small capabilities (batch, real time): OpenAI (and Azure, and compatible
servers), Anthropic, Gemini and local. Gemini's SDK is an extra: it is imported only when a
Gemini provider is built."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from batchpilot.errors import UserInputError
from batchpilot.providers import capabilities
from batchpilot.providers.base import (
    Answer,
    AuthenticationFailed,
    BatchAPI,
    BatchTags,
    CallFailed,
    Capabilities,
    Provider,
    RealtimeAPI,
    RemoteBatch,
    RemoteNotFound,
    RemoteStatus,
)
from batchpilot.providers.registry import kind, kinds, provider_for, register
from batchpilot.spec.model import ProviderSpec

if TYPE_CHECKING:
    from batchpilot.providers.anthropic import AnthropicProvider, anthropic_provider
    from batchpilot.providers.local import LocalProvider, local_provider
    from batchpilot.providers.openai import OpenAIProvider, openai_provider

__all__ = [
    "LOCAL_SERVER_DIR",
    "Answer",
    "AnthropicProvider",
    "AuthenticationFailed",
    "BatchAPI",
    "BatchTags",
    "CallFailed",
    "Capabilities",
    "LocalProvider",
    "OpenAIProvider",
    "Provider",
    "RealtimeAPI",
    "RemoteBatch",
    "RemoteNotFound",
    "RemoteStatus",
    "anthropic_provider",
    "kind",
    "kinds",
    "local_provider",
    "openai_provider",
    "provider_for",
    "register",
]

LOCAL_SERVER_DIR = "local-server"


_LAZY = {
    "AnthropicProvider": "anthropic",
    "anthropic_provider": "anthropic",
    "LocalProvider": "local",
    "local_provider": "local",
    "OpenAIProvider": "openai",
    "openai_provider": "openai",
}
"""Names whose modules import an SDK: loaded when first asked for, so that planning, status
and the other commands that build no provider do not pay for the SDKs."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def _openai(spec: ProviderSpec, state_dir: Path, environ: Mapping[str, str] | None) -> Provider:
    from batchpilot.providers.openai import openai_provider

    return openai_provider(
        base_url=spec.base_url,
        api_key_env=spec.api_key_env,
        organization=spec.organization,
        project=spec.project,
        kind=cast(Literal["openai", "azure", "compatible"], spec.kind),
        api_version=spec.api_version,
        environ=environ,
    )


def _local(spec: ProviderSpec, state_dir: Path, environ: Mapping[str, str] | None) -> Provider:
    from batchpilot.providers.local import local_provider

    model_path = Path(spec.model_path).expanduser() if spec.model_path else None
    return local_provider(
        state_dir / LOCAL_SERVER_DIR,
        responder=spec.responder,
        model_path=model_path,
        slots=spec.slots,
        threads=spec.threads,
    )


def _anthropic(spec: ProviderSpec, state_dir: Path, environ: Mapping[str, str] | None) -> Provider:
    from batchpilot.providers.anthropic import anthropic_provider

    return anthropic_provider(
        base_url=spec.base_url,
        api_key_env=spec.api_key_env,
        state_dir=state_dir,
        environ=environ,
    )


register("local", _local, capabilities.LOCAL)
for _kind in ("openai", "azure", "compatible"):
    register(_kind, _openai, capabilities.OPENAI[_kind])


def _gemini(spec: ProviderSpec, state_dir: Path, environ: Mapping[str, str] | None) -> Provider:
    try:
        from batchpilot.providers.gemini import gemini_provider
    except ImportError:
        raise UserInputError(
            "provider kind 'gemini' needs the google-genai SDK: pip install 'batchpilot[gemini]'"
        ) from None
    return gemini_provider(base_url=spec.base_url, api_key_env=spec.api_key_env, environ=environ)


register("anthropic", _anthropic, capabilities.ANTHROPIC)
register("gemini", _gemini, capabilities.GEMINI)
