"""Token prices and per-tier rate limits, read from the versioned data files in `data_files`.

Prices are USD per 1M tokens. Each row may also give the model's context window and the most
output tokens one answer can have (reasoning included), which bound a request's worst case;
whether the model has the flex tier (batch prices on the real-time API); and whether it is a
reasoning model (`max_completion_tokens`, no temperature, `reasoning_effort`).
A model name is looked up as given, then through the table's
aliases, then again with a trailing snapshot date (`-2024-07-18` or `-20250514`) removed.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from batchpilot.answers import token_count
from batchpilot.errors import ConfigError, UserInputError

__all__ = ["Price", "PriceTable", "TierLimits", "prices_for", "tier_limits", "usage_cost"]

_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
_Schema = TypeVar("_Schema", bound=BaseModel)
_MESSAGES = {
    "extra_forbidden": "unknown field",
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
}
_PRICE_KEYS = (
    "input",
    "cached_input",
    "cache_write_input",
    "output",
    "batch_input",
    "batch_output",
    "batch_discount",
)


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, dt.date) else value


def _tier_key(tier: object) -> str:
    text = str(tier).strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    return text.removeprefix("tier") or text


_Usd = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
_Discount = Annotated[float, Field(gt=0, le=1, strict=True)]
_Count = Annotated[int, Field(ge=0, strict=True)]
_Tokens = Annotated[int, Field(ge=1, strict=True)]
_Date = Annotated[str, BeforeValidator(_iso), Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Override(_Strict):
    """A job's price row; every key is optional and merged over the table's row."""

    input: _Usd | None = None
    cached_input: _Usd | None = None
    cache_write_input: _Usd | None = None
    output: _Usd | None = None
    batch_input: _Usd | None = None
    batch_output: _Usd | None = None
    batch_discount: _Discount | None = None

    @field_validator("input", "batch_input", "batch_discount")
    @classmethod
    def _not_null(cls, value: float | None) -> float:
        if value is None:
            raise ValueError("may not be null")
        return value


class _Row(_Override):
    provider: Literal["openai", "anthropic", "gemini", "local"]
    input: _Usd
    cached_input: _Usd | None
    output: _Usd | None
    batch_discount: _Discount
    source: str = Field(min_length=1)
    as_of: _Date
    confidence: Literal["verified", "secondary"]
    context_window: _Tokens | None = None
    max_output_tokens: _Tokens | None = None
    flex: bool = False
    reasoning: bool = False


class _PriceFile(_Strict):
    version: Literal[1]
    updated: _Date
    models: dict[str, _Row]
    aliases: dict[str, str] = Field(default_factory=dict)


class _Tier(_Strict):
    rpm: _Count | None = None
    rpd: _Count | None = None
    tpm: _Count | None = None
    batch_queue_tokens: _Count | None = None


class _LimitRow(_Strict):
    source: str = Field(min_length=1)
    confidence: Literal["verified", "secondary"]
    tiers: dict[str | int, _Tier]


class _LimitFile(_Strict):
    version: Literal[1]
    updated: _Date
    models: dict[str, _LimitRow]


def _problems(exc: ValidationError, model: str | None = None) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if model is None and len(loc) >= 2 and loc[0] == "models":
            where, loc = f"model {loc[1]!r}, ", loc[2:]
        else:
            where = "" if model is None else f"model {model!r}, "
        target = f"field {'.'.join(loc)!r}" if loc else "row"
        message = _MESSAGES.get(error["type"], error["msg"])
        lines.append(f"  {where}{target}: {message}")
    return "\n".join(lines)


# libyaml's loader where PyYAML was built with it: the packaged tables parse 8x faster.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(path: Path | None, name: str, schema: type[_Schema]) -> tuple[_Schema, str]:
    if path is None:
        resource = resources.files("batchpilot.data_files") / name
        where, text = str(resource), resource.read_text(encoding="utf-8")
    else:
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    try:
        return schema.model_validate(data), where
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid table:\n{_problems(exc)}") from None


@functools.cache
def _packaged(name: str, schema: type[_Schema]) -> tuple[_Schema, str]:
    return _load_yaml(None, name, schema)


def _read(path: Path | None, name: str, schema: type[_Schema]) -> tuple[_Schema, str]:
    return _packaged(name, schema) if path is None else _load_yaml(path, name, schema)


@dataclass(frozen=True)
class Price:
    """One model's prices in USD per 1M tokens; `None` output means the model has no output."""

    model: str
    input: float
    cached_input: float | None
    output: float | None
    batch_input: float
    batch_output: float | None
    source: str
    as_of: str
    confidence: str
    batch_discount: float = 0.5
    context_window: int | None = None
    max_output_tokens: int | None = None
    flex: bool = False
    reasoning: bool = False
    cache_write_input: float | None = None

    def rates(self, *, batch: bool) -> tuple[float, float, float | None]:
        """(input, cached input, output) per 1M tokens for real-time or batch use."""
        if not batch:
            cached = self.input if self.cached_input is None else self.cached_input
            return self.input, cached, self.output
        # Assumes the batch discount stacks on the cached-input price; OpenAI has not said.
        if self.cached_input is None:
            return self.batch_input, self.batch_input, self.batch_output
        return self.batch_input, self.cached_input * self.batch_discount, self.batch_output

    def cache_write_rate(self, *, batch: bool) -> float:
        """Per 1M input tokens written to a prompt cache: the input price unless the table
        gives one; the batch discount stacks on it."""
        if self.cache_write_input is None:
            return self.batch_input if batch else self.input
        return self.cache_write_input * (self.batch_discount if batch else 1.0)


def _make_price(
    model: str,
    values: Mapping[str, Any],
    source: str,
    as_of: str,
    confidence: str,
    limits: tuple[int | None, int | None] = (None, None),
    kinds: tuple[bool, bool] = (False, False),
) -> Price:
    rates = {key: values[key] for key in _PRICE_KEYS}
    if rates["batch_input"] is None:
        rates["batch_input"] = rates["input"] * rates["batch_discount"]
    if rates["batch_output"] is None and rates["output"] is not None:
        rates["batch_output"] = rates["output"] * rates["batch_discount"]
    window, most = limits
    return Price(
        model=model,
        source=source,
        as_of=as_of,
        confidence=confidence,
        context_window=window,
        max_output_tokens=most,
        flex=kinds[0],
        reasoning=kinds[1],
        **rates,
    )


class PriceTable:
    """The price of every known model, with a job's overrides applied."""

    def __init__(
        self, version: int, updated: str, prices: Mapping[str, Price], aliases: Mapping[str, str]
    ) -> None:
        self.version = version
        self.updated = updated
        self._prices = dict(prices)
        self._aliases = dict(aliases)
        self._rates: dict[tuple[str, bool], _Rates | None] = {}

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> PriceTable:
        """Read the table at `path` (default: the packaged one) and apply a job's `prices:`."""
        table, where = _read(path, "prices.yaml", _PriceFile)
        for alias, target in table.aliases.items():
            if target not in table.models:
                raise ConfigError(f"{where}: alias {alias!r} points to unknown model {target!r}")
            if alias in table.models:
                raise ConfigError(f"{where}: alias {alias!r} is also a model name")
        prices = {
            name: _make_price(
                name,
                row.model_dump(),
                row.source,
                row.as_of,
                row.confidence,
                (row.context_window, row.max_output_tokens),
                (row.flex, row.reasoning),
            )
            for name, row in table.models.items()
        }
        result = cls(table.version, table.updated, prices, table.aliases)
        for model, row in (overrides or {}).items():
            result._override(model, row)
        return result

    def _override(self, model: str, row: Mapping[str, Any]) -> None:
        try:
            given = _Override.model_validate(row).model_dump(exclude_unset=True)
        except ValidationError as exc:
            allowed = ", ".join(_PRICE_KEYS)
            raise ConfigError(
                f"prices: invalid price override (allowed keys: {allowed}):\n"
                f"{_problems(exc, model)}"
            ) from None
        base_name = self._resolve(model)
        if base_name is None:
            missing = [key for key in ("input", "output") if key not in given]
            if missing:
                raise ConfigError(
                    f"prices: model {model!r} is not in the price table, so its override "
                    f"needs {' and '.join(missing)} (USD per 1M tokens)"
                )
            values: dict[str, Any] = dict.fromkeys(_PRICE_KEYS) | {"batch_discount": 0.5}
            limits: tuple[int | None, int | None] = (None, None)
            kinds = (False, False)
        else:
            base = self._prices[base_name]
            limits = (base.context_window, base.max_output_tokens)
            kinds = (base.flex, base.reasoning)
            values = {key: getattr(base, key) for key in _PRICE_KEYS}
            # A new standard price or discount re-derives the batch price unless that is given too.
            if given.keys() & {"input", "batch_discount"}:
                values["batch_input"] = None
            if given.keys() & {"output", "batch_discount"}:
                values["batch_output"] = None
        values |= given
        today = dt.date.today().isoformat()
        self._prices[model] = _make_price(
            model, values, "price override in the job", today, "override", limits, kinds
        )
        self._rates.clear()

    def _resolve(self, model: str) -> str | None:
        if model in self._prices:
            return model
        for name in (model, _DATE_SUFFIX.sub("", model)):
            if name in self._prices:
                return name
            if name in self._aliases:
                return self._aliases[name]
        return None

    @property
    def models(self) -> tuple[str, ...]:
        """Every model with a price row, in table order."""
        return tuple(self._prices)

    def has(self, model: str) -> bool:
        return self._resolve(model) is not None

    def at_no_cost(self) -> PriceTable:
        """This table for a provider that charges nothing (the local one): every model, known
        or not, costs $0; the known models' context windows and maximum outputs still bound
        their requests."""
        return _NoCost(self.version, self.updated, self._prices, self._aliases)

    def close_to(self, model: str) -> list[str]:
        """Models of the table whose names are close to `model` (a misspelling's candidates)."""
        known = [*self._prices, *self._aliases]
        return difflib.get_close_matches(_DATE_SUFFIX.sub("", model), known, n=3, cutoff=0.6)

    def price(self, model: str) -> Price:
        name = self._resolve(model)
        if name is not None:
            return self._prices[name]
        close = self.close_to(model)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserInputError(
            f"no price for model {model!r} in the price table "
            f"(version {self.version}, updated {self.updated}).{hint} "
            f"To use it, give its price in USD per 1M tokens in the job file:\n"
            f"  prices: {{{model}: {{input: ..., output: ...}}}}"
        )

    def rates_of(self, model: str, *, batch: bool) -> _Rates | None:
        """(input, cached input, cache write, output) per 1M tokens of `model`, found once
        per model (ingest prices every answer); None for a model with no price."""
        key = (model, batch)
        if key not in self._rates:
            if not self.has(model):
                self._rates[key] = None
            else:
                price = self.price(model)
                rate_in, rate_cached, rate_out = price.rates(batch=batch)
                self._rates[key] = (
                    rate_in,
                    rate_cached,
                    price.cache_write_rate(batch=batch),
                    rate_out,
                )
        return self._rates[key]

    def cost(
        self,
        model: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        batch: bool,
    ) -> float:
        """USD for one request (or a sum of requests); `input_tokens` includes `cached_tokens`
        (read from a prompt cache) and `cache_write_tokens` (written to one)."""
        if min(input_tokens, output_tokens, cached_tokens, cache_write_tokens) < 0:
            raise UserInputError("token counts must not be negative")
        if cached_tokens + cache_write_tokens > input_tokens:
            raise UserInputError(
                f"cached tokens ({cached_tokens}) and cache writes ({cache_write_tokens}) "
                f"exceed input tokens ({input_tokens})"
            )
        price = self.price(model)
        rate_in, rate_cached, rate_out = price.rates(batch=batch)
        if rate_out is None and output_tokens:
            raise UserInputError(f"model {model!r} has no output price (an embeddings model?)")
        uncached = input_tokens - cached_tokens - cache_write_tokens
        output = output_tokens * (rate_out or 0.0)
        written = cache_write_tokens * price.cache_write_rate(batch=batch)
        return (uncached * rate_in + cached_tokens * rate_cached + written + output) / 1e6


class _NoCost(PriceTable):
    def __init__(
        self, version: int, updated: str, prices: Mapping[str, Price], aliases: Mapping[str, str]
    ) -> None:
        super().__init__(version, updated, prices, aliases)
        self._free: dict[str, Price] = {}

    def has(self, model: str) -> bool:
        return True

    def price(self, model: str) -> Price:
        # asked for every request, several times: made once per model
        free = self._free.get(model)
        if free is None:
            free = self._free[model] = self._made_free(model)
        return free

    def _made_free(self, model: str) -> Price:
        name = self._resolve(model)
        known = self._prices[name] if name is not None else None
        zero = Price(model, 0.0, 0.0, 0.0, 0.0, 0.0, "no charge on this machine", "", "verified")
        if known is None:
            return zero
        output = None if known.output is None else 0.0
        return replace(
            zero,
            model=known.model,
            output=output,
            batch_output=output,
            context_window=known.context_window,
            max_output_tokens=known.max_output_tokens,
            reasoning=known.reasoning,
        )


def prices_for(kind: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PriceTable:
    """The price table for a run on a provider of `kind` with a job's `prices:`: the packaged
    table, at no cost for the local provider (the local model and the synthetic responder)."""
    table = PriceTable.load(overrides=overrides)
    return table.at_no_cost() if kind == "local" else table


_ABSENT = object()
_NO_USAGE: dict[str, Any] = {}


def usage_cost(
    prices: PriceTable | None, model: str, body: dict[str, Any], *, batch: bool
) -> tuple[int, int, float]:
    """(input tokens, output tokens, USD) of an answer, from the `usage` in its body (chat,
    responses or embeddings names); no charge without prices for the model."""
    usage = body.get("usage")
    if usage.__class__ is not dict:
        usage = _NO_USAGE  # none, or not one that can be read
    # as `usage["prompt_tokens"] if "prompt_tokens" in usage else usage.get("input_tokens")`,
    # made a count (`token_count`), read with as few steps as it can be: ingest prices every
    # answer
    prompt = usage.get("prompt_tokens", _ABSENT)
    if prompt is _ABSENT:
        prompt = usage.get("input_tokens")
    if prompt.__class__ is not int or prompt < 0:
        prompt = token_count(prompt)
    completion = usage.get("completion_tokens", _ABSENT)
    if completion is _ABSENT:
        completion = usage.get("output_tokens")
    if completion.__class__ is not int or completion < 0:
        completion = token_count(completion)
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = written = 0
    if details.__class__ is dict:
        cached = min(prompt, token_count(details.get("cached_tokens")))
        written = min(prompt - cached, token_count(details.get("cache_write_tokens")))
    rates = None if prices is None else prices.rates_of(model, batch=batch)
    if prices is None or rates is None:
        return prompt, completion, 0.0
    rate_in, rate_cached, rate_write, rate_out = rates
    if rate_out is None and completion:
        # what `cost` refuses, refused as it says
        prices.cost(
            model,
            input_tokens=prompt,
            output_tokens=completion,
            cached_tokens=cached,
            cache_write_tokens=written,
            batch=batch,
        )
    uncached = prompt - cached - written
    output = completion * (rate_out or 0.0)
    usd = (uncached * rate_in + cached * rate_cached + written * rate_write + output) / 1e6
    return prompt, completion, usd


_Rates = tuple[float, float, float, float | None]


@dataclass(frozen=True)
class TierLimits:
    """A model's limits at one usage tier; None means not known."""

    rpm: int | None
    rpd: int | None
    tpm: int | None
    batch_queue_tokens: int | None
    source: str
    confidence: str = "unknown"


def tier_limits(model: str, tier: str | int = 1, path: Path | None = None) -> TierLimits:
    """The limits of `model` at `tier` (`free`, 1..5) from the limits table (default: packaged).

    An unknown model or tier gives all None: the caller must then ask for explicit limits.
    """
    table, _ = _read(path, "limits.yaml", _LimitFile)
    row = table.models.get(model) or table.models.get(_DATE_SUFFIX.sub("", model))
    tiers = {} if row is None else {_tier_key(key): value for key, value in row.tiers.items()}
    limits = tiers.get(_tier_key(tier))
    if row is None or limits is None:
        return TierLimits(None, None, None, None, f"no known limits for {model!r} at tier {tier}")
    return TierLimits(**limits.model_dump(), source=row.source, confidence=row.confidence)
