"""Settings of the local server: latency model, limits, responder, safety."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from batchpilot.errors import ConfigError

if TYPE_CHECKING:
    from batchpilot.server.faults import FaultPlan
    from batchpilot.server.responders.base import Responder

__all__ = [
    "DEFAULT_MODELS",
    "RateLimit",
    "ServerConfig",
    "parse_queue_limit",
    "parse_rate_limit",
]

# Models the server accepts unless told otherwise; any model with a configured limit is added.
DEFAULT_MODELS: frozenset[str] = frozenset(
    {
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4",
        "gpt-3.5-turbo",
        "o3",
        "o4-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "gpt-3.5-turbo-instruct",
        "davinci-002",
        "babbage-002",
        "omni-moderation-latest",
        "text-moderation-latest",
        "gpt-image-1",
        "dall-e-3",
        "dall-e-2",
        "sora-2",
        "sora-2-pro",
        "local",
        "smollm2",
        "claude-opus-4-6",
        "claude-sonnet-4-6",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.0-flash",
    }
)


@dataclass(frozen=True)
class RateLimit:
    """Real-time limits for one model. None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None


@dataclass
class ServerConfig:
    """Everything that shapes one local server.

    Durations are in virtual seconds; `time_scale` says how many virtual seconds pass per real
    second. The latency model: a batch waits `validation_delay_s`, then runs its requests at
    `processing_tokens_per_s` (input tokens) plus `per_request_s` each, then spends
    `finalizing_delay_s` writing results. Cancelling takes `cancel_delay_s`. A real-time answer
    takes `realtime_latency_s` of wall-clock time (a slow upstream); one asked for at the flex
    tier (`service_tier: "flex"`) takes `flex_latency_s` (None: the same), and that share of
    flex tries, `flex_refusal_rate` (0 to 1), is refused with 429 `resource_unavailable`.
    `responder_threads` requests are answered at once inside batches (the llama model's
    decoding slots); `model_threads` is the llama model's CPU threads (None: llama.cpp's).
    """

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    responder: str | Responder = "synthetic"
    model_path: Path | None = None
    upstream: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    time_scale: float = 1.0
    validation_delay_s: float = 1.0
    processing_tokens_per_s: float = 200_000.0
    per_request_s: float = 0.0
    finalizing_delay_s: float = 1.0
    cancel_delay_s: float = 1.0
    realtime_latency_s: float = 0.0
    flex_latency_s: float | None = None
    flex_refusal_rate: float = 0.0
    completion_window_s: float = 86_400.0
    queue_limits: dict[str, int] = field(default_factory=dict)
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    models: frozenset[str] | None = None
    faults: FaultPlan | None = None
    api_key: str | None = field(default=None, repr=False)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_upload_bytes: int = 512 * 1024 * 1024
    max_storage_bytes: int = 2_500_000_000_000
    max_json_bytes: int = 32 * 1024 * 1024
    max_batch_file_bytes: int = 200 * 1024 * 1024
    max_batch_lines: int = 50_000
    max_string_chars: int = 1_048_576
    max_json_values: int = 1_000_000
    responder_threads: int = 1
    model_threads: int | None = None

    def keys(self) -> tuple[str, ...]:
        """Every accepted API key (`api_key` and `api_keys`); each key is its own project."""
        keys = ((self.api_key,) if self.api_key else ()) + tuple(self.api_keys)
        return tuple(dict.fromkeys(k for k in keys if k))

    def accepted_models(self) -> frozenset[str] | None:
        """The models accepted, or None when any model is."""
        if self.models is not None and "*" in self.models:
            return None
        base = DEFAULT_MODELS if self.models is None else self.models
        return base | set(self.queue_limits) | set(self.rate_limits)


def _split_pair(text: str, flag: str) -> tuple[str, str]:
    model, sep, value = text.partition("=")
    if not sep or not model or not value:
        raise ConfigError(f"{flag} expects MODEL=VALUE, got {text!r}")
    return model.strip(), value.strip()


def _parse_int(value: str, flag: str, text: str) -> int:
    try:
        number = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} in {text!r} is not a whole number") from None
    if number <= 0:
        raise ConfigError(f"{flag}: {value!r} in {text!r} must be positive")
    return number


def parse_queue_limit(text: str) -> tuple[str, int]:
    """Parse `gpt-4o-mini=2000000` into (model, enqueued-token limit)."""
    model, value = _split_pair(text, "--queue-limit")
    return model, _parse_int(value, "--queue-limit", text)


def parse_rate_limit(text: str) -> tuple[str, RateLimit]:
    """Parse `gpt-4o-mini=rpm:500,tpm:200000,rpd:10000` into (model, RateLimit)."""
    model, value = _split_pair(text, "--rate-limit")
    parts: dict[str, int] = {}
    for item in value.split(","):
        key, sep, number = item.partition(":")
        key = key.strip().lower()
        if not sep or key not in {"rpm", "tpm", "rpd"}:
            raise ConfigError(
                f"--rate-limit: {item!r} in {text!r} should look like rpm:500, tpm:200000 "
                "or rpd:10000"
            )
        parts[key] = _parse_int(number.strip(), "--rate-limit", text)
    return model, RateLimit(**parts)
