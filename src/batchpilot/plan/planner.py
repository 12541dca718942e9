"""The planner: every request a job will send, counted, priced, packed and linted offline.

Items stream through once; memory stays flat whatever the number of rows. Identical requests
(same content hash) are planned once and shared by the rows that produce them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchpilot.plan.ahead import Prepared, look_up, read_ahead
from batchpilot.plan.bodies import body_problem
from batchpilot.plan.findings import Findings
from batchpilot.plan.ids import canonical_body, request_id, request_line
from batchpilot.plan.models import is_embedding_model
from batchpilot.plan.packing import BatchLimits, PackedBatch, Packer
from batchpilot.plan.worst import (
    ESTIMATE_MARGIN,
    Bounds,
    Worst,
    bounds_for,
    choices,
    output_cap,
    worst_of,
)
from batchpilot.pricing import PriceTable
from batchpilot.reasoning import fit_reasoning, is_reasoning_model, reasoning_problems
from batchpilot.store.seen import SeenKeys
from batchpilot.tokens import encoding_name_for_model

__all__ = [
    "Item",
    "ModelTotals",
    "PlanResult",
    "PlanSettings",
    "PlanSink",
    "PlannedRequest",
    "Planner",
]


@dataclass(slots=True)
class Item:
    """One row's request, or the reason the row has none (`skip`)."""

    index: int
    row_id: str
    source: str
    endpoint: str
    body: dict[str, Any] | None
    custom_id: str | None = None
    skip: str | None = None
    data: dict[str, Any] | None = None
    rendered: bool = False
    """Whether the body came from the job's templates (its shape needs no check)."""


@dataclass(slots=True)
class PlannedRequest:
    """What a sink receives for each row: the row, its request and the batch it went into."""

    item: Item
    request_id: str
    line: bytes
    input_tokens: int
    batch: int | None
    new: bool
    body: bytes = b""
    content_hash: str = ""
    worst: Worst | None = None


class PlanSink(Protocol):
    def add(self, planned: PlannedRequest) -> None: ...

    def close(self, result: PlanResult) -> None: ...


@dataclass
class ModelTotals:
    """A model's requests summed; a worst case in USD is None once one request has none."""

    requests: int = 0
    input_tokens: int = 0
    expected_output_tokens: int = 0
    worst_output_tokens: int = 0
    worst_usd: float | None = 0.0
    batch_worst_usd: float | None = 0.0

    def add_worst(self, worst: Worst) -> None:
        self.worst_output_tokens += worst.output_tokens or 0
        self.worst_usd = (
            None if self.worst_usd is None or worst.usd is None else (self.worst_usd + worst.usd)
        )
        self.batch_worst_usd = (
            None
            if self.batch_worst_usd is None or worst.batch_usd is None
            else self.batch_worst_usd + worst.batch_usd
        )


@dataclass
class PlanResult:
    rows: int = 0
    requests: int = 0
    duplicate_rows: int = 0
    skipped_rows: int = 0
    input_tokens: int = 0
    tokens_exact: bool = True
    expected_output_tokens: int = 0
    worst_output_tokens: int = 0
    cost: dict[str, float | None] = field(default_factory=dict)
    batches: list[PackedBatch] = field(default_factory=list)
    largest: dict[str, Any] | None = None
    findings: Findings = field(default_factory=Findings)
    models: dict[str, ModelTotals] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)
    strategies: dict[str, dict[str, float | int | str | None]] = field(default_factory=dict)
    prices: dict[str, Any] | None = None
    """The price table's date and each model's (`plan/price_date.py`); None at no cost."""

    @property
    def ok(self) -> bool:
        return self.findings.errors == 0

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "requests": self.requests,
            "duplicate_rows": self.duplicate_rows,
            "skipped_rows": self.skipped_rows,
            "input_tokens": self.input_tokens,
            "input_tokens_exact": self.tokens_exact,
            "output_tokens": {
                "expected": self.expected_output_tokens,
                "worst": self.worst_output_tokens,
            },
            "cost_usd": self.cost,
            "batches": [batch.as_dict() for batch in self.batches],
            "largest_request": self.largest,
            "errors": self.findings.errors,
            "warnings": self.findings.warnings,
            "findings": self.findings.as_list(),
            "findings_omitted": self.findings.omitted(),
            "assumptions": self.assumptions,
            "strategies": self.strategies,
            "prices": self.prices,
        }


@dataclass(frozen=True)
class PlanSettings:
    """What the planner needs beyond the items: limits, output expectations and prices."""

    limits: BatchLimits
    tokens_per_batch: Callable[[str], int | None]
    max_output_tokens: int | None = None
    expected_output_tokens: int | None = None
    expected_output_ratio: float | None = None
    context_window: int | None = None
    prices: PriceTable | None = None
    dedupe: bool = True
    warn_unknown_queue: bool = True
    model_max_output: int | None = None
    """limits.max_output_tokens: the most output one answer of the model can have."""
    budget_usd: float | None = None
    """Under a budget every request needs a worst case in USD: a missing one is an error."""


DEFAULT_EXPECTED_OUTPUT = 200


@dataclass
class _State:
    """What one plan keeps while items stream through it."""

    result: PlanResult
    seen: SeenKeys
    packer: Packer
    checked_models: set[str] = field(default_factory=set)


def known_encoding(model: str) -> bool:
    """Whether `model`'s own tokenizer counts its text (else an OpenAI encoding estimates it)."""
    return encoding_name_for_model(model)[1]


class Planner:
    """Streams items into a PlanResult, and into a sink (batch files, the store) if given."""

    def __init__(self, settings: PlanSettings) -> None:
        self.settings = settings
        self._bounds: dict[str, Bounds] = {}
        self._unbounded: set[str] = set()
        self._fitted: set[tuple[str, str]] = set()
        self._uncapped = 0  # requests that generate output with no max_tokens of their own
        self._generates = False
        self._estimated: set[str] = set()  # models whose input tokens are estimates
        self._reasons: dict[str, bool] = {}  # whether each model reasons

    def bounds(self, model: str) -> Bounds:
        if model not in self._bounds:
            settings = self.settings
            self._bounds[model] = bounds_for(
                model,
                settings.prices,
                window=settings.context_window,
                max_output_tokens=settings.model_max_output,
            )
        return self._bounds[model]

    def _expected_output(self, input_tokens: int) -> int:
        settings = self.settings
        if settings.expected_output_tokens is not None:
            return settings.expected_output_tokens
        if settings.expected_output_ratio is not None:
            return round(settings.expected_output_ratio * input_tokens)
        cap = settings.max_output_tokens
        return min(cap, DEFAULT_EXPECTED_OUTPUT) if cap is not None else DEFAULT_EXPECTED_OUTPUT

    def plan(
        self,
        items: Iterable[Item],
        sink: PlanSink | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        ahead: bool = False,
        input_bytes: int | None = None,
    ) -> PlanResult:
        """Plan `items` in order. `ahead`: prepare items a few chunks ahead, counting
        large plans' tokens in a second process meanwhile (the plan is the same), for items
        that do not depend on what the sink has been given so far; `input_bytes`, the size of
        their input where it is known, says at once whether the plan is large."""
        result = PlanResult()
        self._generates = False
        self._uncapped = 0
        self._estimated = set()
        seen = SeenKeys()
        state = _State(result, seen, Packer(self.settings.limits, self.settings.tokens_per_batch))
        prepared: Iterator[Prepared] = (
            read_ahead(items, self._prepare, lambda rows: look_up(seen, rows), input_bytes)
            if ahead
            else map(self._prepare, items)
        )
        try:
            for count, ready in enumerate(prepared, start=1):
                self._one(ready, state, sink)
                if progress is not None and count % 256 == 0:
                    progress(count)
            if progress is not None:
                progress(result.rows)
        finally:
            if isinstance(prepared, Generator):
                prepared.close()  # a plan that fails stops the counting process now
            seen.close()
        result.batches = state.packer.batches
        self._price(result)
        self._assume(result)
        if sink is not None:
            sink.close(result)
        return result

    def _prepare(self, item: Item) -> Prepared:
        """The item's body as it will be sent and its canonical bytes, or what is wrong with
        it; no finding is made here (the planner makes them in order, in `_one`)."""
        prepared = Prepared(item)
        body = item.body
        if body is None:
            return prepared
        problem = None if item.rendered else body_problem(item.endpoint, body)
        if problem is None:
            body, prepared.notes, problem = self._reasoning(item, body)
        if problem is None:
            try:
                prepared.canonical = canonical_body(body)
            except (UnicodeEncodeError, ValueError, RecursionError) as exc:
                problem = f"the request cannot be written as JSON ({_json_trouble(exc)})"
            else:
                prepared.content_hash = request_id(item.endpoint, prepared.canonical)
        prepared.body, prepared.problem = body, problem
        return prepared

    def _one(self, prepared: Prepared, state: _State, sink: PlanSink | None) -> None:
        item = prepared.item
        result, seen = state.result, state.seen
        findings = result.findings
        result.rows += 1
        first_row = prepared.first_row
        if first_row is None:
            first_row = seen.first("rows", item.row_id)
        if not first_row:
            findings.error(
                "duplicate_row_id",
                f"the id '{item.row_id}' was already used by an earlier row; results could not "
                "be joined back to their rows (check input.id_field)",
                item.row_id,
                item.source,
            )
        if item.body is None:
            result.skipped_rows += 1
            findings.warning("skipped_row", item.skip or "skipped", item.row_id, item.source)
            if sink is not None:
                sink.add(PlannedRequest(item, "", b"", 0, None, False))
            return
        body, problem = prepared.body, prepared.problem
        model = str(item.body.get("model", ""))
        for note in prepared.notes:
            if (model, note) not in self._fitted:
                self._fitted.add((model, note))
                findings.warning("reasoning_model", f"model '{model}': {note}")
        if problem is not None or body is None:
            findings.error("bad_request", problem or "", item.row_id, item.source)
            return
        canonical = prepared.canonical
        model = str(body.get("model", ""))
        if model not in state.checked_models:
            state.checked_models.add(model)
            self._check_model(model, item, findings)
        content_hash = prepared.content_hash or request_id(item.endpoint, canonical)
        rid = item.custom_id or content_hash
        new = prepared.new_request
        if new is None:
            new = seen.first("requests", rid)
        new = new or not self.settings.dedupe
        if not new and item.custom_id is not None:
            findings.error(
                "duplicate_custom_id",
                f"custom_id '{rid}' appears more than once; the Batch API rejects the whole batch",
                item.row_id,
                item.source,
            )
        line = request_line(rid, item.endpoint, canonical)
        if not new:
            result.duplicate_rows += 1
            if sink is not None:
                sink.add(PlannedRequest(item, rid, line, 0, None, False, canonical, content_hash))
            return
        counted = prepared.tokens()
        tokens = counted.tokens
        result.tokens_exact &= counted.exact
        size = len(line) + 1
        packer = state.packer
        cap, n = output_cap(body), choices(body)
        reserve = cap or 0
        self._check_request(item, body, tokens, reserve, size, packer.token_limit(model), findings)
        batch = packer.add(model, size, tokens, item.index, item.endpoint)
        totals = result.models.setdefault(model, ModelTotals())
        known = known_encoding(model)
        bounds = self.bounds(model)
        prices = self.settings.prices
        worst = worst_of(item.endpoint, body, tokens, prices, bounds, exact=known, cap=cap, n=n)
        if not known and worst.usd:
            self._estimated.add(model)
        if worst.output_tokens is None:
            self._no_bound(model, item, findings)
        expected = self._expected(item.endpoint, model, cap, n, tokens, worst.output_tokens)
        totals.requests += 1
        totals.input_tokens += tokens
        totals.expected_output_tokens += expected
        totals.add_worst(worst)
        result.requests += 1
        result.input_tokens += tokens
        result.expected_output_tokens += expected
        result.worst_output_tokens += worst.output_tokens or 0
        if result.largest is None or tokens > result.largest["input_tokens"]:
            result.largest = {
                "request_id": rid,
                "row_id": item.row_id,
                "source": item.source,
                "input_tokens": tokens,
                "bytes": size,
            }
        if sink is not None:
            sink.add(
                PlannedRequest(
                    item, rid, line, tokens, batch.index, True, canonical, content_hash, worst
                )
            )

    def _reasoning(
        self, item: Item, body: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...], str | None]:
        """A rendered body fitted to a reasoning model, with what was changed (each change a
        warning, once per model, made by `_one`); what the API would refuse in a body given as
        it is."""
        model = str(body.get("model", ""))
        reasoning = self._reasons.get(model)
        if reasoning is None:
            reasoning = self._reasons[model] = is_reasoning_model(model, self.settings.prices)
        notes: list[str] = []
        if reasoning and item.rendered:
            body, notes = fit_reasoning(item.endpoint, body)
        problems = reasoning_problems(item.endpoint, body, reasoning)
        return body, tuple(notes), problems[0] if problems else None

    def _expected(
        self, endpoint: str, model: str, cap: int | None, n: int, tokens: int, worst: int | None
    ) -> int:
        if endpoint == "/v1/embeddings" or is_embedding_model(model):
            return 0
        self._generates = True
        if cap is None:
            self._uncapped += 1
        expected = self._expected_output(tokens) * n
        return expected if worst is None else min(expected, worst)

    def _no_bound(self, model: str, item: Item, findings: Findings) -> None:
        """A request of `model` whose output nothing bounds (reported once per model)."""
        if model in self._unbounded:
            return
        self._unbounded.add(model)
        message = (
            f"nothing bounds the output of model '{model}' (no max_tokens in the request, and "
            "its maximum output and context window are unknown), so its worst case is unknown; "
            "set params.max_tokens (or limits.max_output_tokens, the model's maximum output)"
        )
        if self.settings.budget_usd is not None:
            findings.error(
                "unbounded_output", f"{message}: a budget needs it", item.row_id, item.source
            )
        else:
            findings.warning("unbounded_output", message, item.row_id, item.source)

    def _check_model(self, model: str, item: Item, findings: Findings) -> None:
        embedding = is_embedding_model(model)
        if item.endpoint == "/v1/embeddings" and not embedding:
            findings.error(
                "endpoint_model_mismatch",
                f"model '{model}' is not an embedding model but the endpoint is /v1/embeddings",
                item.row_id,
                item.source,
            )
        elif item.endpoint != "/v1/embeddings" and embedding:
            findings.error(
                "endpoint_model_mismatch",
                f"'{model}' is an embedding model; use endpoint /v1/embeddings",
                item.row_id,
                item.source,
            )
        prices = self.settings.prices
        if prices is not None and not prices.has(model):
            close = prices.close_to(model)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            guess = hint[:1].upper() + hint[1:]
            if self.settings.budget_usd is not None:
                findings.error(
                    "unknown_price",
                    f"no price for model '{model}', so a budget cannot be kept; {hint}"
                    "Otherwise add one under "
                    f"`prices:` in the job file: prices: {{{model}: {{input: ..., output: ...}}}} "
                    "(USD per 1M tokens)",
                )
            else:
                findings.warning(
                    "unknown_price",
                    f"no price for model '{model}'; costs are not shown. {guess}"
                    "Add one under `prices:` in the job file",
                )
        settings = self.settings
        if (
            settings.warn_unknown_queue
            and settings.limits.tokens is None
            and settings.tokens_per_batch(model) is None
        ):
            findings.warning(
                "unknown_queue_limit",
                f"the enqueued-token limit of '{model}' is unknown, so batches are not packed by "
                "tokens; set limits.queue_tokens (or limits.tokens_per_batch)",
            )

    def _check_request(
        self,
        item: Item,
        body: dict[str, Any],
        tokens: int,
        reserve: int,
        size: int,
        token_limit: int | None,
        findings: Findings,
    ) -> None:
        """`reserve`: the request's own output cap, or 0."""
        limits = self.settings.limits
        if _empty_prompt(item.endpoint, body):
            findings.warning(
                "empty_prompt", "the rendered prompt is empty", item.row_id, item.source
            )
        window = self.bounds(str(body.get("model", ""))).context_window
        if window is not None and tokens + reserve > window:
            findings.error(
                "context_window",
                f"{tokens} input tokens + {reserve} output tokens exceed the model's context "
                f"window of {window}",
                item.row_id,
                item.source,
            )
        if token_limit is not None and tokens > token_limit:
            findings.error(
                "over_queue_limit",
                f"{tokens} input tokens exceed the {token_limit} tokens a batch may hold "
                "(limits.tokens_per_batch / the queue limit); no batch can carry this request",
                item.row_id,
                item.source,
            )
        if size > limits.bytes:
            findings.error(
                "over_batch_bytes",
                f"the request is {size} bytes, more than a batch file may hold ({limits.bytes})",
                item.row_id,
                item.source,
            )

    def _price(self, result: PlanResult) -> None:
        prices = self.settings.prices
        cost: dict[str, float | None] = {
            "batch": 0.0,
            "realtime": 0.0,
            "batch_worst": 0.0,
            "realtime_worst": 0.0,
        }
        for model, totals in result.models.items():
            if prices is None or not prices.has(model):
                cost = dict.fromkeys(cost)
                break
            for key, batch in (("batch", True), ("realtime", False)):
                previous = cost[key] or 0.0
                cost[key] = previous + prices.cost(
                    model,
                    input_tokens=totals.input_tokens,
                    output_tokens=totals.expected_output_tokens,
                    batch=batch,
                )
            for key, worst in (
                ("batch_worst", totals.batch_worst_usd),
                ("realtime_worst", totals.worst_usd),
            ):
                held = cost[key]
                cost[key] = None if held is None or worst is None else held + worst
        result.cost = cost

    def _assume(self, result: PlanResult) -> None:
        settings = self.settings
        if result.requests and not self._generates:
            return  # embeddings only: no output to expect
        if settings.expected_output_tokens is None and settings.expected_output_ratio is None:
            expected = min(
                settings.max_output_tokens or DEFAULT_EXPECTED_OUTPUT, DEFAULT_EXPECTED_OUTPUT
            )
            result.assumptions.append(
                f"expected output: {expected} tokens per request (set estimate.output_tokens or "
                "estimate.output_ratio)"
            )
        if self._estimated and settings.prices is not None:
            margin = round(ESTIMATE_MARGIN * 100)
            result.assumptions.append(
                f"worst case: input tokens of {', '.join(sorted(self._estimated))} are "
                f"estimates (no offline tokenizer), so the worst case counts them {margin}% higher"
            )
        if settings.max_output_tokens is None and self._uncapped:
            result.assumptions.append(
                "worst case: no max_tokens is set, so each answer may be as long as the "
                "model's maximum output (set params.max_tokens to bound it)"
            )


def _json_trouble(error: Exception) -> str:
    if isinstance(error, UnicodeEncodeError):
        return "a string holds a lone surrogate, which is not text"
    if isinstance(error, RecursionError):
        return "it nests too deeply"
    return str(error)


def _empty_prompt(endpoint: str, body: dict[str, Any]) -> bool:
    if endpoint == "/v1/embeddings":
        value = body.get("input")
        return value in ("", [], None)
    messages = body.get("messages") if endpoint == "/v1/chat/completions" else body.get("input")
    if not isinstance(messages, list):
        return not messages
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", None):
            continue
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return False
        if isinstance(content, list) and content:
            return False
    return True
