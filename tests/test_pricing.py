from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest

from batchpilot.errors import ConfigError, UserInputError
from batchpilot.pricing import Price, PriceTable, TierLimits, tier_limits

OPENAI_MODELS = [
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5.1",
    "gpt-5.2",
    "gpt-5.4",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5-pro",
    "o1",
    "o3",
    "o3-mini",
    "o4-mini",
    "o3-pro",
    "text-embedding-3-small",
    "text-embedding-3-large",
]

# Batch prices per 1M tokens (input, output) from the Anthropic docs.
ANTHROPIC_BATCH = {
    "claude-opus-4-6": (2.50, 12.50),
    "claude-opus-4-5": (2.50, 12.50),
    "claude-opus-4-1": (7.50, 37.50),
    "claude-opus-4": (7.50, 37.50),
    "claude-sonnet-4-6": (1.50, 7.50),
    "claude-sonnet-4-5": (1.50, 7.50),
    "claude-sonnet-4": (1.50, 7.50),
    "claude-haiku-4-5": (0.50, 2.50),
    "claude-3-5-haiku": (0.40, 2.00),
}

VALID_ROW = """\
    provider: openai
    input: 1.0
    cached_input: null
    output: 2.0
    batch_discount: 0.5
    source: test
    as_of: "2026-01-01"
    confidence: verified
"""


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def write_prices(tmp_path: Path, rows: str, extra: str = "") -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(f'version: 1\nupdated: "2026-11-01"\nmodels:\n{rows}{extra}', encoding="utf-8")
    return path


def test_packaged_files_are_package_data() -> None:
    names = {p.name for p in importlib.resources.files("batchpilot.data_files").iterdir()}
    assert {"prices.yaml", "limits.yaml"} <= names


def test_packaged_table_has_version_and_every_model(table: PriceTable) -> None:
    assert table.version == 1
    assert table.updated == "2026-11-01"
    for model in [*OPENAI_MODELS, *ANTHROPIC_BATCH, "local", "smollm2"]:
        assert table.has(model), model
        assert table.price(model).model == model


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", (0.15, 0.075, 0.60, 0.075, 0.30)),
        ("gpt-4o", (2.50, 1.25, 10.00, 1.25, 5.00)),
        ("gpt-4.1", (2.00, 0.50, 8.00, 1.00, 4.00)),
        ("gpt-4.1-nano", (0.10, 0.025, 0.40, 0.05, 0.20)),
        ("gpt-5", (1.25, 0.125, 10.00, 0.625, 5.00)),
        ("gpt-5.4", (2.50, 0.25, 15.00, 1.25, 7.50)),
        ("gpt-5-pro", (15.00, None, 120.00, 7.50, 60.00)),
        ("o4-mini", (1.10, 0.275, 4.40, 0.55, 2.20)),
        ("o3-pro", (20.00, None, 80.00, 10.00, 40.00)),
        ("text-embedding-3-small", (0.02, None, None, 0.01, None)),
        ("text-embedding-3-large", (0.13, None, None, 0.065, None)),
        ("local", (0.0, 0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_reference_prices(
    table: PriceTable,
    model: str,
    expected: tuple[float, float | None, float | None, float, float | None],
) -> None:
    price = table.price(model)
    got = (price.input, price.cached_input, price.output, price.batch_input, price.batch_output)
    assert got == pytest.approx(expected)


def test_confidence_marks(table: PriceTable) -> None:
    assert table.price("gpt-4.1-mini").confidence == "verified"
    assert table.price("gpt-4o-mini").confidence == "secondary"
    assert "launch post" in table.price("gpt-4.1").source


@pytest.mark.parametrize(("model", "batch"), ANTHROPIC_BATCH.items())
def test_anthropic_standard_is_twice_batch(
    table: PriceTable, model: str, batch: tuple[float, float]
) -> None:
    price = table.price(model)
    assert (price.batch_input, price.batch_output) == pytest.approx(batch)
    assert (price.input, price.output) == pytest.approx((2 * batch[0], 2 * batch[1]))


def test_every_row_has_source_and_date(table: PriceTable) -> None:
    assert len(table.models) >= 30
    for model in table.models:
        price = table.price(model)
        assert price.source.strip(), model
        assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", price.as_of), model
        assert price.confidence in {"verified", "secondary"}, model


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-0", "claude-opus-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ],
)
def test_dates_and_aliases(table: PriceTable, name: str, canonical: str) -> None:
    assert table.has(name)
    assert table.price(name) == table.price(canonical)


def test_cost_realtime_and_batch(table: PriceTable) -> None:
    # gpt-4o-mini: 800 uncached * 0.15 + 200 cached * 0.075 + 500 out * 0.60
    realtime = table.cost(
        "gpt-4o-mini", input_tokens=1000, cached_tokens=200, output_tokens=500, batch=False
    )
    assert realtime == pytest.approx((800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6)
    # batch: 800 * 0.075 + 200 * (0.075 * 0.5) + 500 * 0.30
    batch = table.cost(
        "gpt-4o-mini", input_tokens=1000, cached_tokens=200, output_tokens=500, batch=True
    )
    assert batch == pytest.approx(217.5 / 1e6)


def test_cost_without_cached_price_uses_input_price(table: PriceTable) -> None:
    cost = table.cost(
        "o3-pro", input_tokens=1_000_000, cached_tokens=400_000, output_tokens=0, batch=True
    )
    assert cost == pytest.approx(10.0)
    embed = table.cost(
        "text-embedding-3-small", input_tokens=2_000_000, output_tokens=0, batch=False
    )
    assert embed == pytest.approx(0.04)


def test_cost_rejects_bad_counts(table: PriceTable) -> None:
    with pytest.raises(UserInputError, match="exceed"):
        table.cost("gpt-4o", input_tokens=10, cached_tokens=11, output_tokens=0, batch=False)
    with pytest.raises(UserInputError, match="negative"):
        table.cost("gpt-4o", input_tokens=-1, output_tokens=0, batch=False)
    with pytest.raises(UserInputError, match="no output price"):
        table.cost("text-embedding-3-large", input_tokens=1, output_tokens=1, batch=True)


def test_override_changes_price_and_rederives_batch() -> None:
    table = PriceTable.load(overrides={"gpt-4o": {"input": 3.0}})
    price = table.price("gpt-4o")
    assert (price.input, price.batch_input) == (3.0, 1.5)
    assert (price.output, price.cached_input) == (10.0, 1.25)
    assert price.confidence == "override"


def test_override_explicit_batch_price() -> None:
    table = PriceTable.load(overrides={"gpt-4o": {"batch_input": 2.0, "batch_output": 6.0}})
    price = table.price("gpt-4o")
    assert (price.input, price.batch_input, price.batch_output) == (2.5, 2.0, 6.0)


def test_override_adds_a_model() -> None:
    table = PriceTable.load(overrides={"ft:gpt-4o-mini:acme": {"input": 0.3, "output": 1.2}})
    assert table.cost(
        "ft:gpt-4o-mini:acme", input_tokens=1_000_000, output_tokens=1_000_000, batch=True
    ) == pytest.approx(0.75)


def test_override_of_a_new_model_needs_input_and_output() -> None:
    with pytest.raises(ConfigError, match=r"'my-model'.*output"):
        PriceTable.load(overrides={"my-model": {"input": 1.0}})


def test_override_rejects_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"model 'gpt-4o', field 'inptu': unknown field"):
        PriceTable.load(overrides={"gpt-4o": {"inptu": 1.0}})


@pytest.mark.parametrize("bad", [-1.0, "cheap", True, None])
def test_override_rejects_bad_values(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"field 'input'"):
        PriceTable.load(overrides={"gpt-4o": {"input": bad}})


def test_unknown_model_suggests_and_explains(table: PriceTable) -> None:
    assert not table.has("gpt-4o-mni")
    with pytest.raises(UserInputError) as info:
        table.price("gpt-4o-mni")
    message = str(info.value)
    assert "'gpt-4o-mni'" in message
    assert "gpt-4o-mini" in message
    assert "prices: {gpt-4o-mni: {input: ..., output: ...}}" in message


def test_tier_limits_gpt_4o_mini() -> None:
    limits = tier_limits("gpt-4o-mini", 1)
    assert (limits.rpm, limits.rpd, limits.tpm, limits.batch_queue_tokens) == (
        500,
        10_000,
        200_000,
        2_000_000,
    )
    assert limits.source
    assert tier_limits("gpt-4o-mini-2024-07-18", "tier 1") == limits
    free = tier_limits("gpt-4o-mini", "free")
    assert (free.rpm, free.batch_queue_tokens) == (3, None)
    assert tier_limits("gpt-4o-mini", 5).batch_queue_tokens == 15_000_000_000


def test_tier_limits_other_models() -> None:
    assert tier_limits("text-embedding-3-small", 2).batch_queue_tokens == 20_000_000
    assert tier_limits("gpt-4o", 3).tpm == 600_000
    assert tier_limits("gpt-4.1", 2).rpm is None


@pytest.mark.parametrize(("model", "tier"), [("gpt-5-nano", 1), ("gpt-4o-mini", 9)])
def test_tier_limits_unknown_gives_none(model: str, tier: int) -> None:
    limits = tier_limits(model, tier)
    assert isinstance(limits, TierLimits)
    assert (limits.rpm, limits.rpd, limits.tpm, limits.batch_queue_tokens) == (None,) * 4


def test_malformed_price_file_names_file_model_and_field(tmp_path: Path) -> None:
    path = write_prices(
        tmp_path,
        "  good:\n" + VALID_ROW + "  bad:\n" + VALID_ROW.replace("output: 2.0", "output: -2.0"),
    )
    with pytest.raises(ConfigError) as info:
        PriceTable.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "model 'bad', field 'output'" in message
    assert "'good'" not in message


def test_price_file_rejects_unknown_and_missing_fields(tmp_path: Path) -> None:
    row = VALID_ROW.replace("    source: test\n", "    sauce: test\n")
    path = write_prices(tmp_path, "  m:\n" + row)
    with pytest.raises(ConfigError) as info:
        PriceTable.load(path)
    assert "model 'm', field 'sauce': unknown field" in str(info.value)
    assert "model 'm', field 'source'" in str(info.value)


def test_price_file_alias_must_point_to_a_model(tmp_path: Path) -> None:
    path = write_prices(tmp_path, "  m:\n" + VALID_ROW, "aliases:\n  n: nope\n")
    with pytest.raises(ConfigError, match=r"alias 'n'.*'nope'"):
        PriceTable.load(path)


def test_price_file_from_path_and_unquoted_date(tmp_path: Path) -> None:
    path = write_prices(tmp_path, "  m:\n" + VALID_ROW.replace('"2026-01-01"', "2026-01-01"))
    price = PriceTable.load(path).price("m")
    assert price == Price(
        model="m",
        input=1.0,
        cached_input=None,
        output=2.0,
        batch_input=0.5,
        batch_output=1.0,
        source="test",
        as_of="2026-01-01",
        confidence="verified",
    )


def test_price_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        PriceTable.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PriceTable.load(broken)


def test_malformed_limits_file(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(
        'version: 1\nupdated: "2026-11-01"\nmodels:\n  m:\n    source: s\n'
        "    confidence: verified\n    tiers:\n      1: {rpm: -5}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"model 'm', field 'tiers\.1\.rpm'"):
        tier_limits("m", 1, path)


def test_usage_cost_reads_chat_and_responses_usage_alike() -> None:
    from batchpilot.pricing import usage_cost

    table = PriceTable.load()
    chat = {
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 400},
        }
    }
    responses = {
        "usage": {
            "input_tokens": 1000,
            "output_tokens": 100,
            "input_tokens_details": {"cached_tokens": 400},
        }
    }
    expected = table.cost(
        "gpt-4o-mini", input_tokens=1000, output_tokens=100, cached_tokens=400, batch=True
    )
    for body in (chat, responses):
        assert usage_cost(table, "gpt-4o-mini", body, batch=True) == (1000, 100, expected)
    assert usage_cost(None, "gpt-4o-mini", chat, batch=True) == (1000, 100, 0.0)
    assert usage_cost(table, "no-such-model", chat, batch=False) == (1000, 100, 0.0)


def test_usage_cost_charges_exactly_what_cost_does_and_refuses_a_model_without_its_price() -> None:
    import random

    from batchpilot.pricing import usage_cost

    table, free = PriceTable.load(), PriceTable.load().at_no_cost()
    pick = random.Random(17)
    models = ["gpt-4o-mini", "claude-sonnet-4-5", "gpt-4.1", "gemini-2.5-flash"]
    for _ in range(400):
        model, batch = pick.choice(models), pick.random() < 0.5
        prompt, output = pick.randrange(0, 50_000), pick.randrange(0, 5_000)
        cached = pick.randrange(0, prompt + 1)
        written = pick.randrange(0, prompt - cached + 1)
        body = {
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            }
        }
        tokens = {"input_tokens": prompt, "output_tokens": output, "cached_tokens": cached}
        usd = table.cost(model, **tokens, cache_write_tokens=written, batch=batch)
        assert usage_cost(table, model, body, batch=batch) == (prompt, output, usd)
        assert usage_cost(free, model, body, batch=batch) == (prompt, output, 0.0)
    # a count below zero is a provider's odd answer, read as none, not a reason to stop
    negative = {"usage": {"prompt_tokens": -1, "completion_tokens": 1}}
    one_out = table.cost("gpt-4o-mini", input_tokens=0, output_tokens=1, batch=True)
    assert usage_cost(table, "gpt-4o-mini", negative, batch=True) == (0, 1, one_out)
    embedding = {"usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    with pytest.raises(UserInputError, match="no output price"):
        usage_cost(table, "text-embedding-3-small", embedding, batch=True)
    assert usage_cost(table, "text-embedding-3-small", {"usage": {"prompt_tokens": 5}}, batch=True)[
        2
    ] == table.cost("text-embedding-3-small", input_tokens=5, output_tokens=0, batch=True)


def test_cache_writes_are_billed_at_their_own_rate_and_reads_at_the_cached_rate() -> None:
    table = PriceTable.load()
    price = table.price("claude-sonnet-4-5")
    assert (price.input, price.cached_input, price.cache_write_input) == (3.0, 0.3, 3.75)
    # 500k fresh, 200k read from the cache, 300k written to it
    tokens = {"input_tokens": 1_000_000, "output_tokens": 0, "cached_tokens": 200_000}
    standard = table.cost("claude-sonnet-4-5", **tokens, cache_write_tokens=300_000, batch=False)
    assert standard == pytest.approx(0.5 * 3.0 + 0.2 * 0.3 + 0.3 * 3.75)
    batch = table.cost("claude-sonnet-4-5", **tokens, cache_write_tokens=300_000, batch=True)
    assert batch == pytest.approx(standard / 2)
    # without a cache-write price (OpenAI) a write costs what fresh input does
    assert table.cost(
        "gpt-4o-mini", input_tokens=1000, output_tokens=0, cache_write_tokens=1000, batch=False
    ) == table.cost("gpt-4o-mini", input_tokens=1000, output_tokens=0, batch=False)
    with pytest.raises(UserInputError, match="exceed input tokens"):
        table.cost(
            "claude-sonnet-4-5",
            input_tokens=10,
            output_tokens=0,
            cached_tokens=6,
            cache_write_tokens=6,
            batch=False,
        )


def test_an_anthropic_answers_cache_reads_and_writes_are_priced_from_its_usage() -> None:
    from batchpilot.pricing import usage_cost
    from batchpilot.providers.anthropic_shapes import chat_completion

    message = {
        "id": "msg_1",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "cache_creation_input_tokens": 3000,
            "output_tokens": 10,
        },
    }
    table = PriceTable.load()
    prompt, output, usd = usage_cost(
        table, "claude-sonnet-4-5", chat_completion(message), batch=True
    )
    assert (prompt, output) == (5100, 10)
    assert usd == pytest.approx((100 * 1.5 + 2000 * 0.15 + 3000 * 1.875 + 10 * 7.5) / 1e6)
