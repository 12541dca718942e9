"""OpenAI (and Azure OpenAI, and compatible servers) through the official SDK: the client, built
from settings and the environment, behind the batch API (`openai_batch`) and the real-time
API; every SDK exception is translated at this edge (`openai_errors`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import httpx2
import openai

from batchpilot.errors import UserInputError
from batchpilot.providers.base import Capabilities
from batchpilot.providers.capabilities import OPENAI
from batchpilot.providers.openai_batch import OpenAIBatches
from batchpilot.providers.openai_errors import error_detail, translate_error
from batchpilot.providers.openai_realtime import OpenAIRealtime

__all__ = [
    "AZURE_API_VERSION",
    "CAPABILITIES",
    "OpenAIProvider",
    "error_detail",
    "openai_provider",
    "translate_error",
]

AZURE_API_VERSION = "2024-10-21"
COMPATIBLE_PLACEHOLDER_KEY = "not-needed"


CAPABILITIES: dict[str, Capabilities] = OPENAI


class OpenAIProvider:
    """A Provider over an injected `openai.OpenAI` (or `AzureOpenAI`) client; its capabilities
    are those of its kind (`name`) unless given."""

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        name: str = "openai",
        capabilities: Capabilities | None = None,
    ) -> None:
        self.name = name
        self.capabilities = capabilities or CAPABILITIES.get(name, CAPABILITIES["compatible"])
        self._client = client
        self._batches = OpenAIBatches(client)

    @property
    def client(self) -> openai.OpenAI:
        return self._client

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    def async_client(self) -> openai.AsyncOpenAI:
        """An async client with the same endpoint and credentials, for the real-time lane (its
        own retries off: the lane retries)."""
        client = self._client
        if isinstance(client, openai.AzureOpenAI):
            return _async_azure(client)
        return openai.AsyncOpenAI(
            api_key=client.api_key,
            base_url=client.base_url,
            organization=client.organization,
            project=client.project,
            max_retries=0,
        )

    @property
    def batches(self) -> OpenAIBatches:
        return self._batches

    def realtime(self) -> OpenAIRealtime:
        return OpenAIRealtime(self.async_client())

    def close(self) -> None:
        self._client.close()


def _async_azure(client: openai.AzureOpenAI) -> openai.AsyncAzureOpenAI:
    """The async twin of an Azure client: same endpoint and deployment (or base URL), API
    version, key or Azure AD token, organization, project and timeout."""
    # The SDK keeps the endpoint, deployment, version and AD token only as private fields; the
    # public base URL alone would route non-deployment paths (e.g. /responses) differently.
    common: dict[str, Any] = {
        "api_version": client._api_version,
        "api_key": client.api_key,
        "azure_ad_token": client._azure_ad_token,
        "azure_ad_token_provider": client._azure_ad_token_provider,
        "organization": client.organization,
        "project": client.project,
        "timeout": client.timeout,
        "max_retries": 0,
    }
    endpoint = client._azure_endpoint
    if endpoint is None:
        return openai.AsyncAzureOpenAI(base_url=str(client.base_url), **common)
    return openai.AsyncAzureOpenAI(
        azure_endpoint=str(endpoint), azure_deployment=client._azure_deployment, **common
    )


def openai_provider(
    *,
    base_url: str | None,
    api_key_env: str | None = None,
    organization: str | None = None,
    project: str | None = None,
    kind: Literal["openai", "azure", "compatible"] = "openai",
    api_version: str | None = None,
    max_retries: int = 2,
    timeout: float = 600.0,
    environ: Mapping[str, str] | None = None,
    http_client: httpx2.Client | None = None,
) -> OpenAIProvider:
    """Build a provider from settings and the environment (`os.environ` unless given).

    The key comes from `api_key_env` (default OPENAI_API_KEY; azure: AZURE_OPENAI_API_KEY). A
    `compatible` server without a key in the default variable gets a placeholder key.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    variable = api_key_env or ("AZURE_OPENAI_API_KEY" if kind == "azure" else "OPENAI_API_KEY")
    api_key = env.get(variable) or None
    if api_key is None:
        if kind != "compatible" or api_key_env is not None:
            raise UserInputError(
                f"no API key for the {kind} provider: set the environment variable {variable} "
                "(or name another variable with provider.api_key_env)"
            )
        api_key = COMPATIBLE_PLACEHOLDER_KEY
    organization = organization or env.get("OPENAI_ORG_ID") or None
    project = project or env.get("OPENAI_PROJECT_ID") or None
    url_variable = "AZURE_OPENAI_ENDPOINT" if kind == "azure" else "OPENAI_BASE_URL"
    base_url = base_url or env.get(url_variable) or None
    if base_url is None and kind != "openai":
        raise UserInputError(
            f"the {kind} provider needs a base URL: set provider.base_url in the job "
            f"or the environment variable {url_variable}"
        )
    client: openai.OpenAI
    if kind == "azure" and base_url is not None:
        client = openai.AzureOpenAI(
            azure_endpoint=base_url,
            api_version=api_version or AZURE_API_VERSION,
            api_key=api_key,
            organization=organization,
            max_retries=max_retries,
            timeout=timeout,
            http_client=http_client,
        )
    else:
        client = openai.OpenAI(
            api_key=api_key,
            organization=organization,
            project=project,
            base_url=base_url,
            max_retries=max_retries,
            timeout=timeout,
            http_client=http_client,
        )
    return OpenAIProvider(client, name=kind)
