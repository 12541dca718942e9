"""The job model: what to send, to whom, from which data, under which limits."""

from __future__ import annotations

import re
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchpilot.spec.params import MAX_OUTPUT_TOKENS, param_problems

__all__ = [
    "BudgetSpec",
    "EstimateSpec",
    "ImageSpec",
    "InputModel",
    "JobSpec",
    "LimitsSpec",
    "MessageSpec",
    "OutputSpec",
    "PartSpec",
    "PromptSpec",
    "ProviderSpec",
    "RealtimeSpec",
    "ResponseSpec",
    "StepSpec",
    "TargetSpec",
]

Endpoint = Literal["/v1/chat/completions", "/v1/embeddings", "/v1/responses"]
Detail = Literal["auto", "low", "high"]

# Parameters the planner sets itself; a job must not set them in `params`.
RESERVED_PARAMS = frozenset({"model", "messages", "input", "instructions", "stream"})


# Counts past this are typos; it keeps every count inside SQLite's 64-bit integers.
_HUGE = 10**12
MAX_SLOTS = 64
"""The most decoding slots a job may ask of the local model."""
MAX_THREADS = 256
"""The most CPU threads a job may ask of the local model."""

# What a local model's setting says when the provider runs no model here.
_LOCAL_ONLY = {
    "slots": "slots sets the local model's decoding slots; provider kind '{kind}' has none: "
    "remove provider.slots (real-time concurrency is realtime.concurrency)",
    "threads": "threads sets the local model's CPU threads; provider kind '{kind}' runs no "
    "model here: remove provider.threads",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_deadline(value: str, now: datetime | None = None) -> datetime:
    """A deadline from an ISO time (with zone, or UTC) or a duration from now: 90m, 36h, 2d."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(value)
    if match:
        try:
            return now + timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])
        except OverflowError:
            raise ValueError(f"deadline {value!r} is too far away; give at most 3650d") from None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"deadline {value!r} is neither an ISO time (2026-12-01T18:00:00Z) nor a duration "
            "(90m, 36h, 2d)"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"deadline {value!r} is out of the range of dates") from None
    return moment


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_flags_for_numbers(cls, data: Any) -> Any:
        """`true` is not 1: pydantic would take a boolean for a number."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                key = field.alias or name
                value = data.get(key)
                if isinstance(value, bool) and _numeric(field.annotation):
                    raise ValueError(f"{key} must be a number, not {str(value).lower()}")
        return data


def _numeric(annotation: Any) -> bool:
    """Whether a field takes numbers (and not booleans)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(annotation))


class ProviderSpec(Strict):
    """Who answers. Keys are never written here: `api_key_env` names the variable that holds one."""

    kind: Literal["local", "openai", "azure", "compatible", "anthropic", "gemini"] = Field(
        "local",
        description="local: the embedded server and model, no key; openai: api.openai.com; "
        "azure: Azure OpenAI; compatible: any OpenAI-compatible base_url; anthropic: "
        "api.anthropic.com (Message Batches and Messages); gemini: the Gemini Developer API "
        "(Batch Mode and generateContent).",
    )
    base_url: str | None = Field(None, description="API base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the key (default OPENAI_API_KEY; azure: "
        "AZURE_OPENAI_API_KEY; anthropic: ANTHROPIC_API_KEY; gemini: GEMINI_API_KEY, then "
        "GOOGLE_API_KEY).",
    )
    organization: str | None = None
    project: str | None = None
    api_version: str | None = Field(None, description="Azure OpenAI API version.")
    tier: Annotated[int, Field(ge=0, le=5)] = Field(
        1, description="Usage tier, for the built-in queue and rate limits."
    )
    model_path: str | None = Field(None, description="local: a GGUF file (default SmolLM2-135M).")
    responder: Literal["llama", "synthetic"] = Field(
        "llama",
        description="local: who answers. llama: the embedded model; synthetic: made-up answers "
        "that fit the response schema (for trying a pipeline, or images the model cannot see).",
    )
    slots: Annotated[int, Field(ge=1, le=MAX_SLOTS)] | None = Field(
        None,
        description="local: requests answered at once (the model's decoding slots, batched "
        "together). Default: chosen from the machine, two per CPU core up to 4, fewer when "
        "memory is short.",
    )

    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None = Field(
        None,
        description="local: CPU threads the model computes with. Default: llama.cpp's own "
        "choice (the physical cores); fewer leave room for other work on a shared machine.",
    )

    @field_validator("slots", "threads")
    @classmethod
    def _only_local(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if value is not None and kind is not None and kind != "local":
            raise ValueError(_LOCAL_ONLY[str(info.field_name)].format(kind=kind))
        return value

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderSpec:
        if self.kind in ("compatible", "azure") and not self.base_url:
            raise ValueError(f"provider kind '{self.kind}' needs base_url")
        return self


class InputModel(Strict):
    """Where the rows come from: a file or directory (`path`), or a Hugging Face dataset."""

    path: str | None = None
    dataset: str | None = Field(
        None,
        description="A Hugging Face dataset: a name in the local cache (e.g. stanfordnlp/imdb) "
        "or a directory written by save_to_disk.",
    )
    split: str | None = Field(None, description="dataset: which split (e.g. train).")
    config: str | None = Field(None, description="dataset: which configuration (subset).")
    format: Literal["auto", "jsonl", "csv", "parquet", "dir"] = "auto"
    id_field: str | None = None
    records: str | None = Field(None, description="Dotted path to a list inside each line.")
    glob: str = "*"
    text_field: str = "text"
    encoding: str = "utf-8"

    @model_validator(mode="after")
    def _one_source(self) -> InputModel:
        if (self.path is None) == (self.dataset is None):
            raise ValueError(
                "give input.path (a file or directory) or input.dataset (a Hugging Face "
                "dataset)" + (", not both" if self.path is not None else "")
            )
        if self.dataset is None:
            given = [name for name in ("split", "config") if getattr(self, name) is not None]
            if given:
                raise ValueError(f"input.{given[0]} is for input.dataset; remove it")
        else:
            defaults = InputModel.model_fields
            for name in ("format", "records", "glob", "text_field", "encoding"):
                if getattr(self, name) != defaults[name].default:
                    raise ValueError(f"input.{name} is for input.path; remove it")
        return self


class ImageSpec(Strict):
    """An image part added to the user message: a URL or a local file from a row field."""

    field: str = Field(description="Row field holding an http(s)/data URL or a local file path.")
    detail: Detail = "auto"


class PartSpec(Strict):
    """One part of a message: a text template, or an image (URL or local file) template."""

    type: Literal["text", "image"]
    text: str | None = None
    image: str | None = Field(None, description="Template giving a URL or a local file path.")
    detail: Detail = "auto"

    @model_validator(mode="after")
    def _has_content(self) -> PartSpec:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs 'text'")
        if self.type == "image" and self.image is None:
            raise ValueError("an image part needs 'image'")
        return self


class MessageSpec(Strict):
    """One message template: a role and a text template or a list of parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[PartSpec]


class PromptSpec(Strict):
    """Templates (Jinja, sandboxed) rendered once per row. Give system/user or messages."""

    system: str | None = None
    user: str | None = None
    messages: list[MessageSpec] | None = None
    images: list[ImageSpec] = Field(default_factory=list)
    input: str | None = Field(None, description="Embeddings: the text to embed.")

    @model_validator(mode="after")
    def _one_style(self) -> PromptSpec:
        if self.messages is not None and (self.system is not None or self.user is not None):
            raise ValueError("give either system/user or messages, not both")
        return self


class ResponseSpec(Strict):
    """Structured output: a JSON-schema file or a pydantic model named `module:Class`."""

    schema_: str = Field(alias="schema")
    name: str | None = None
    strict: bool = True

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True
    )


class OutputSpec(Strict):
    """Where results are exported, and in which format (by suffix when `auto`).

    With `response_key`, each input record is written back with its answer under that key
    (nested records are written back inside their lines, in the input's own layout).
    """

    path: str
    format: Literal["auto", "jsonl", "csv", "parquet", "dataset"] = "auto"
    response_key: str | None = None
    include_input: bool = True


class LimitsSpec(Strict):
    """Packing and planning limits. Defaults follow the provider's documented limits."""

    requests_per_batch: Annotated[int, Field(ge=1, le=50_000)] = 50_000
    bytes_per_batch: Annotated[int, Field(ge=1024, le=200_000_000)] = 190_000_000
    tokens_per_batch: Annotated[int, Field(ge=1, le=_HUGE)] | None = Field(
        None, description="Input tokens per batch (default: queue_fraction of the queue limit)."
    )
    queue_tokens: Annotated[int, Field(ge=1, le=_HUGE)] | None = Field(
        None, description="The model's enqueued-token limit (default: the tier table)."
    )
    queue_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    context_window: Annotated[int, Field(ge=1, le=_HUGE)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=_HUGE)] | None = Field(
        None,
        description="The most output tokens one answer of the model can have (default: the "
        "price table's); bounds the worst case of requests with no max_tokens.",
    )
    on_missing_field: Literal["fail", "skip"] = "fail"
    max_attempts: Annotated[int, Field(ge=1, le=20)] = Field(
        3, description="Attempts per request before it fails for good (retryable errors only)."
    )


class BudgetSpec(Strict):
    """The hard spending limit for the whole job, in USD."""

    max_usd: Annotated[float, Field(ge=0, le=1e12)] | None = None


class EstimateSpec(Strict):
    """How many output tokens to expect per request (the worst case is always max_tokens)."""

    output_tokens: Annotated[int, Field(ge=0, le=MAX_OUTPUT_TOKENS)] | None = None
    output_ratio: Annotated[float, Field(ge=0, le=1000)] | None = Field(
        None, description="Expected output tokens as a fraction of input tokens."
    )
    batch_turnaround_hours: Annotated[float, Field(gt=0, le=720)] = Field(
        12.0, description="How long a batch takes, for the strategy estimates."
    )
    flex_latency_seconds: Annotated[float, Field(ge=0, le=3600)] = Field(
        30.0,
        description="How long one flex answer takes, for the strategy estimates and the "
        "hybrid's split (the lane's concurrency answers that many at once).",
    )
    sample: str | None = Field(
        None,
        description="A batch output file of earlier answers (OpenAI batch output JSONL); "
        "the mean of their completion tokens is the expected output.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> EstimateSpec:
        given = [self.output_tokens, self.output_ratio, self.sample]
        if sum(value is not None for value in given) > 1:
            raise ValueError("give one of output_tokens, output_ratio or sample")
        return self


class RealtimeSpec(Strict):
    """Real-time limits (default: the provider's tier table) and the lane's concurrency."""

    rpm: Annotated[int, Field(ge=1, le=_HUGE)] | None = None
    tpm: Annotated[int, Field(ge=1, le=_HUGE)] | None = None
    rpd: Annotated[int, Field(ge=1, le=_HUGE)] | None = None
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        600.0,
        description="Seconds a real-time call may take before it is given up and tried again.",
    )
    flex: bool | None = Field(
        None,
        description="hybrid: send the real-time share at the flex tier (batch prices, slower); "
        "unset: where the provider and the model offer it.",
    )
    flex_fallback: Annotated[float, Field(ge=0, le=30 * 86_400)] = Field(
        900.0,
        description="Seconds before the deadline from which requests the flex tier refuses "
        "go at the standard tier instead.",
    )


class TargetSpec(Strict):
    """Stop once enough valid answers exist; plan more rows of the input while too few pass."""

    valid: Annotated[int, Field(ge=1, le=_HUGE)] = Field(
        description="How many valid answers (or items, with `items`) the job needs."
    )
    items: str | None = Field(
        None,
        description="A list field of the structured answer: count its elements instead of "
        "answers (a request that asks for ten scenarios counts ten).",
    )
    first_rows: Annotated[int, Field(ge=1, le=_HUGE)] | None = Field(
        None, description="Rows planned in the first wave (default: 25% over the target)."
    )
    overshoot: Annotated[float, Field(ge=1, le=5)] = Field(
        1.25, description="Later waves plan this much more than the pass rate so far says."
    )


def _checked_params(params: dict[str, Any]) -> dict[str, Any]:
    clash = sorted(RESERVED_PARAMS & set(params))
    if clash:
        raise ValueError(
            f"params may not set {', '.join(clash)}: the job's model and prompt set them"
        )
    problems = param_problems(params)
    if problems:
        raise ValueError("; ".join(problems))
    return params


class StepSpec(Strict):
    """One step of a multi-step job. Its templates see the earlier steps' answers as
    `steps.NAME` (the structured answer, or the text); unset fields come from the job."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    model: str | None = None
    prompt: PromptSpec
    params: dict[str, Any] | None = None
    response: ResponseSpec | None = None
    validators: list[str] | None = None
    response_key: str | None = Field(
        None, description="Where this step's answer goes in the output (default: its name)."
    )

    @field_validator("params")
    @classmethod
    def _params(cls, params: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if params is None else _checked_params(params)


class JobSpec(Strict):
    """One job: a dataset, a prompt, a model, and the limits to run it under."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    provider: ProviderSpec = Field(default_factory=lambda: ProviderSpec())
    model: str
    endpoint: Endpoint = "/v1/chat/completions"
    input: InputModel
    prompt: PromptSpec = Field(default_factory=lambda: PromptSpec())
    params: dict[str, Any] = Field(default_factory=dict)
    response: ResponseSpec | None = None
    output: OutputSpec | None = None
    limits: LimitsSpec = Field(default_factory=lambda: LimitsSpec())
    budget: BudgetSpec = Field(default_factory=lambda: BudgetSpec())
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    estimate: EstimateSpec = Field(default_factory=lambda: EstimateSpec())
    strategy: Literal["batch", "realtime", "flex", "hybrid"] = "batch"
    deadline: str | None = Field(
        None, description="When the job must be done: an ISO time or a duration like 36h."
    )
    realtime: RealtimeSpec = Field(default_factory=lambda: RealtimeSpec())
    fallback: str | None = Field(
        None,
        description="A Python callable (module:function) giving a deterministic answer, from the "
        "input row, to items that finally fail; marked as fallback in the results.",
    )
    validators: list[str] = Field(
        default_factory=list,
        description="Python callables (module:function) that accept or reject each answer.",
    )
    target: TargetSpec | None = None
    steps: list[StepSpec] | None = Field(
        None,
        description="A multi-step job: each step runs over every row whose earlier steps "
        "succeeded, and its templates can use their answers.",
    )
    store: str | None = Field(
        None,
        description="The store the job's runs live in: a postgresql:// URL, without a password "
        "(libpq reads PGPASSWORD or ~/.pgpass). BATCHPILOT_STORE and --store win over it.",
    )
    base_dir: Path = Field(default=Path(), exclude=True)

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "must be a postgresql:// URL; leave it out to keep runs in the state directory"
            )
        userinfo = value.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        if ":" in userinfo:
            raise ValueError(
                "holds a password, which a job file must not: set PGPASSWORD or use ~/.pgpass, "
                "and write the URL without it"
            )
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_deadline(value)
        return value

    @field_validator("params")
    @classmethod
    def _no_reserved(cls, params: dict[str, Any]) -> dict[str, Any]:
        return _checked_params(params)

    @model_validator(mode="after")
    def _prompt_fits_endpoint(self) -> JobSpec:
        prompt = self.prompt
        if self.endpoint == "/v1/embeddings":
            if prompt.input is None:
                raise ValueError("the embeddings endpoint needs prompt.input")
        elif self.steps is None and prompt.messages is None and prompt.user is None:
            raise ValueError("the prompt needs a user template (prompt.user) or prompt.messages")
        if self.response is not None and self.endpoint == "/v1/embeddings":
            raise ValueError("a response schema does not apply to embeddings")
        if self.steps is not None:
            self._check_steps(self.steps)
        if self.target is not None and self.target.items is not None and self.response is None:
            raise ValueError(
                "target.items counts a list field of a structured answer; add a response schema"
            )
        key = self.output.response_key if self.output is not None else None
        if self.target is not None and self.input.records is not None and key is not None:
            raise ValueError(
                "target mode stops before every nested record is answered, so the answers "
                "cannot be written back into input.records; remove output.response_key (the "
                "output is then a table of the first target.valid valid rows) or the target"
            )
        return self

    def _check_steps(self, steps: list[StepSpec]) -> None:
        if not steps:
            raise ValueError("steps is empty; give at least one step, or remove it")
        names = [step.name for step in steps]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"step names must be unique; {', '.join(twice)} repeats")
        if self.endpoint == "/v1/embeddings":
            raise ValueError("steps are for chat and responses endpoints, not embeddings")
        if self.target is not None:
            raise ValueError("target and steps cannot be combined yet; run them as two jobs")
        ignored = [
            name
            for name, given in (
                ("prompt", self.prompt.user is not None or self.prompt.messages is not None),
                ("response", self.response is not None),
                ("validators", bool(self.validators)),
                ("fallback", self.fallback is not None),
            )
            if given
        ]
        if ignored:
            raise ValueError(
                f"with steps, {', '.join(ignored)} belong in each step (a fallback is for "
                "single-step jobs); move or remove the job-level one"
            )

    def resolve(self, relative: str) -> Path:
        """A path from the job file, relative to the job file's directory."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def max_output_tokens(self) -> int | None:
        value = self.params.get("max_completion_tokens", self.params.get("max_tokens"))
        if value is None:
            value = self.params.get("max_output_tokens")
        return int(value) if isinstance(value, int) else None
