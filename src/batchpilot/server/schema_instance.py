"""Deterministic example instances for JSON schemas.

`instance_for_schema(schema, seed)` returns a small, readable value that validates against the
schema, and the same value every time for the same schema and seed. Local `$ref`s (including
recursive ones), `anyOf`/`oneOf`/`allOf`, string patterns and formats, numeric bounds and
array/object limits are supported; `not` is honoured on a best-effort basis.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import random
import uuid
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple
from urllib.parse import unquote

from jsonschema import Draft202012Validator

from batchpilot.server.regex_sample import RegexWriter, UnsupportedRegex, compile_pattern

__all__ = ["instance_for_schema"]


_WORDS = (
    "amber",
    "anchor",
    "apple",
    "autumn",
    "beacon",
    "birch",
    "bright",
    "canyon",
    "cedar",
    "clear",
    "cloud",
    "copper",
    "coral",
    "crisp",
    "delta",
    "ember",
    "field",
    "forest",
    "gentle",
    "harbor",
    "island",
    "jade",
    "lantern",
    "linen",
    "maple",
    "meadow",
    "mellow",
    "north",
    "ocean",
    "orchid",
    "pebble",
    "quiet",
    "river",
    "saffron",
    "silver",
    "spruce",
    "stone",
    "summit",
    "velvet",
    "willow",
)
_TYPES = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
_MAX_DEPTH = 6
_HARD_LIMIT = 40
_ATTEMPTS = 12
_NULL_ODDS = 0.2
# Extra repetitions allowed for `*`, `+` and `{n,}` on the first attempts at a pattern.
_REPEAT_CAPS = (3, 3, 3, 0, 1, 2)


class _Ctx(NamedTuple):
    depth: int
    refs: tuple[str, ...]
    limited: bool  # past the depth or recursion limit: produce as little as the schema allows


def instance_for_schema(schema: dict[str, Any], seed: str) -> Any:
    """Return a value valid against `schema`, always the same one for the same `seed`.

    Raises ValueError when the schema admits no value or uses something unsupported
    (a non-local `$ref`, unsatisfiable bounds, a contradictory `allOf`).
    """
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    generator = _Generator(schema, random.Random(int.from_bytes(digest, "big")))
    return generator.generate(schema, _Ctx(0, ("#",), False))


class _Generator:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def generate(self, schema: Any, ctx: _Ctx) -> Any:
        schema = _as_schema(schema)
        if schema is True:
            return self._text(0, None)
        if "$ref" in schema or "allOf" in schema:
            merged, refs = self._flatten({"allOf": [schema]})
            if len(ctx.refs) + len(refs) > _HARD_LIMIT:
                raise ValueError(f"$ref {refs[-1]!r} recurses without a way to stop")
            limited = ctx.limited or any(r in ctx.refs for r in refs)
            return self.generate(merged, ctx._replace(refs=(*ctx.refs, *refs), limited=limited))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._generate_union(schema, key, ctx)
        value = self._generate_plain(schema, ctx)
        for _ in range(_ATTEMPTS if "not" in schema else 0):
            if not self._matches(value, schema["not"]):
                break
            value = self._generate_plain(schema, ctx)
        return value

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ValueError(f"only local $ref values ('#...') are supported, got {ref!r}")
        node = self.root
        for raw in ref[1:].split("/")[1:]:
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise ValueError(f"cannot resolve $ref {ref!r}") from None
        return node

    def _flatten(self, schema: dict[str, Any]) -> tuple[Any, list[str]]:
        """Merge `allOf` members and `$ref` targets into one schema; also return the refs used."""
        members: list[Any] = [schema]
        merged: dict[str, Any] = {}
        refs: list[str] = []
        for _ in range(_HARD_LIMIT * 4):
            if not members:
                return merged, refs
            member = _as_schema(members.pop(0))
            if member is True:
                continue
            if "$ref" in member:
                refs.append(member["$ref"])
                rest = {k: v for k, v in member.items() if k != "$ref"}
                members[:0] = [self._resolve(member["$ref"]), rest]
            elif "allOf" in member:
                if not isinstance(member["allOf"], list) or not member["allOf"]:
                    raise ValueError("allOf must be a non-empty array of schemas")
                members[:0] = [{k: v for k, v in member.items() if k != "allOf"}, *member["allOf"]]
            else:
                merged = _merge(merged, member)
        raise ValueError("allOf or $ref nests or refers to itself too deeply to merge")

    def _generate_union(self, schema: dict[str, Any], key: str, ctx: _Ctx) -> Any:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise ValueError(f"{key} must be a non-empty array of schemas")
        rest = {k: v for k, v in schema.items() if k != key}
        error = ValueError(f"no branch of {key} admits a value")
        fallback: list[Any] = []
        order = self._branch_order(branches, ctx)
        for index in order * (8 if key == "oneOf" else 1):
            try:
                value = self.generate(_combine(rest, branches[index]), ctx)
            except ValueError as exc:
                error = exc
                continue
            others = (b for i, b in enumerate(branches) if i != index)
            if key == "anyOf" or not any(self._matches(value, other) for other in others):
                return value
            fallback.append(value)
        if fallback:
            return fallback[0]
        raise error

    def _branch_order(self, branches: list[Any], ctx: _Ctx) -> list[int]:
        simplest = sorted(range(len(branches)), key=lambda i: _complexity(branches[i]))
        if ctx.limited or len(branches) == 1:
            return simplest
        nulls = [
            i for i, b in enumerate(branches) if isinstance(b, dict) and b.get("type") == "null"
        ]
        others = [i for i in range(len(branches)) if i not in nulls]
        pool = nulls if nulls and (not others or self.rng.random() < _NULL_ODDS) else others
        first = self.rng.choice(pool)
        return [first, *(i for i in simplest if i != first)]

    def _matches(self, value: Any, schema: Any) -> bool:
        validator = _validator_for(json.dumps(self.root, sort_keys=True))
        return next(iter(validator.descend(value, schema)), None) is None

    def _generate_plain(self, schema: dict[str, Any], ctx: _Ctx) -> Any:
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise ValueError("enum must be a non-empty array")
            if "type" in schema:
                kinds = _as_types(schema["type"])
                values = [v for v in values if any(_is_type(v, k) for k in kinds)]
                if not values:
                    raise ValueError(f"no enum value has the type {schema['type']!r}")
            return copy.deepcopy(self.rng.choice(values))
        kinds = _as_types(schema["type"]) if "type" in schema else [_infer_type(schema)]
        kind = kinds[0]
        if len(kinds) > 1:
            others = [k for k in kinds if k != "null"]
            null = len(others) < len(kinds) and (ctx.limited or self.rng.random() < _NULL_ODDS)
            kind = "null" if null else self.rng.choice(others)
        if kind == "null":
            return None
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind in ("integer", "number"):
            return self._number(schema, integer=kind == "integer")
        if kind == "string":
            return self._string(schema)
        return self._array(schema, ctx) if kind == "array" else self._object(schema, ctx)

    def _number(self, schema: dict[str, Any], *, integer: bool) -> int | float:
        lo, lo_ex = _bound(schema, "minimum", "exclusiveMinimum", max)
        hi, hi_ex = _bound(schema, "maximum", "exclusiveMaximum", min)
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_ex or hi_ex))):
            raise ValueError(f"no number lies between the lower bound {lo} and upper bound {hi}")
        if lo is None:
            lo = Fraction(0) if hi is None or hi > 0 or (hi == 0 and not hi_ex) else hi - 100
        if hi is None:
            hi = lo + 100
        step = _to_fraction(schema["multipleOf"], "multipleOf") if "multipleOf" in schema else None
        if step is not None and step <= 0:
            raise ValueError("multipleOf must be greater than 0")
        if integer:
            step = Fraction(step.numerator if step is not None else 1)
        if step is None:
            return self._real(lo, lo_ex, hi, hi_ex)
        k_lo = math.floor(lo / step) + 1 if lo_ex else math.ceil(lo / step)
        k_hi = math.ceil(hi / step) - 1 if hi_ex else math.floor(hi / step)
        if k_lo > k_hi:
            raise ValueError(f"no multiple of {step} lies between {lo} and {hi}")
        span, whole = min(k_hi, k_lo + 20), step.denominator
        candidates = [self.rng.randint(k_lo, span) for _ in range(_ATTEMPTS)]
        candidates += range(
            math.ceil(k_lo / whole) * whole, min(k_hi, k_lo + 20 * whole) + 1, whole
        )
        for k in [*candidates, *range(k_lo, span + 1)]:
            exact = k * step
            value = int(exact) if exact.denominator == 1 else float(exact)
            if _is_multiple(value, schema.get("multipleOf", 1)) and _within(
                value, lo, lo_ex, hi, hi_ex
            ):
                return value
        raise ValueError(f"no representable multiple of {schema['multipleOf']} lies in bounds")

    def _real(self, lo: Fraction, lo_ex: bool, hi: Fraction, hi_ex: bool) -> float:
        u = float(lo + (hi - lo) * Fraction(self.rng.random()))
        for value in (round(u, 2), round(u, 4), u, float((lo + hi) / 2), float(lo), float(hi)):
            if _within(value, lo, lo_ex, hi, hi_ex):
                return value
        raise ValueError(f"no float lies strictly between {lo} and {hi}")

    def _string(self, schema: dict[str, Any]) -> str:
        lo, hi = _count(schema, "minLength") or 0, _count(schema, "maxLength")
        if hi is not None and lo > hi:
            raise ValueError(f"minLength {lo} is greater than maxLength {hi}")
        if "pattern" in schema:
            return self._pattern_string(schema["pattern"], lo, hi)
        fmt = schema.get("format")
        maker = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        if maker is not None:
            value = maker(self.rng)
            if lo <= len(value) and (hi is None or len(value) <= hi):
                return value
        return self._text(lo, hi)

    def _text(self, lo: int, hi: int | None) -> str:
        text = " ".join(self.rng.choice(_WORDS) for _ in range(2))
        while len(text) < lo:
            text += " " + self.rng.choice(_WORDS)
        if hi is not None and len(text) > hi:
            text = text[:hi].rstrip()
            text += "x" * (lo - len(text))
        return text

    def _pattern_string(self, pattern: Any, lo: int, hi: int | None) -> str:
        compiled, tree = compile_pattern(pattern)
        matching: list[str] = []
        stretched = sorted({max(1, lo * k // 4) for k in (1, 2, 3, 4, 8, 16)})
        attempts = [(cap, False) for cap in _REPEAT_CAPS] + [(cap, True) for cap in stretched]
        for cap, greedy in attempts:
            try:
                candidate = RegexWriter(self.rng, cap, greedy).write(tree)
            except UnsupportedRegex:
                break
            if compiled.search(candidate):
                if lo <= len(candidate) and (hi is None or len(candidate) <= hi):
                    return candidate
                matching.append(candidate)
        if matching:
            return matching[0]
        for _ in range(_ATTEMPTS):
            candidate = self._text(lo, hi)
            if compiled.search(candidate):
                return candidate
        raise ValueError(f"could not produce a string matching the pattern {pattern!r}")

    def _array(self, schema: dict[str, Any], ctx: _Ctx) -> list[Any]:
        lo, hi = _count(schema, "minItems") or 0, _count(schema, "maxItems")
        if hi is not None and lo > hi:
            raise ValueError(f"minItems {lo} is greater than maxItems {hi}")
        prefix, items = schema.get("prefixItems", []), schema.get("items", True)
        if isinstance(items, list):
            prefix, items = items, schema.get("additionalItems", True)
        if items is False and lo > len(prefix):
            raise ValueError(f"minItems {lo} needs more items than the {len(prefix)} allowed")
        n = lo
        if not ctx.limited:
            top = max(lo, 1) + 2 if hi is None else min(hi, max(lo, 1) + 2)
            n = max(self.rng.randint(min(max(lo, 1), top), top), min(len(prefix), top))
        if items is False:
            n = min(n, len(prefix))
        child, unique = self._child(ctx), schema.get("uniqueItems") is True
        out: list[Any] = []
        seen: set[Any] = set()
        for i in range(n):
            for _ in range(_ATTEMPTS if unique else 1):
                value = self.generate(prefix[i] if i < len(prefix) else items, child)
                if not unique or _freeze(value) not in seen:
                    break
            else:
                if i >= lo:
                    break
                raise ValueError(f"cannot produce {lo} distinct items for uniqueItems")
            seen.add(_freeze(value))
            out.append(value)
        if schema.get("contains", True) is not True and schema.get("minContains") != 0:
            base = items if isinstance(items, dict) else {}
            value = self.generate(_combine(base, schema["contains"]), child)
            if hi is None or len(out) < hi:
                out.append(value)
            elif out:
                out[-1] = value
        return out

    def _object(self, schema: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties", {})
        required: list[str] = schema.get("required", [])
        patterns: dict[str, Any] = schema.get("patternProperties", {})
        additional = schema.get("additionalProperties", True)
        lo, hi = _count(schema, "minProperties") or 0, _count(schema, "maxProperties")
        child = self._child(ctx)
        out: dict[str, Any] = {}
        for name in dict.fromkeys([*props, *required, *(f"extra_{i}" for i in range(1, lo + 1))]):
            needed = name in required
            room = name in props and not ctx.limited and (hi is None or len(out) < hi)
            if not (needed or room or len(out) < lo):
                continue
            matched = [s for p, s in patterns.items() if compile_pattern(p)[0].search(name)]
            sub = props.get(name, True if matched else additional)
            for extra in matched:
                sub = _combine(sub, extra)
            try:
                out[name] = self.generate(sub, child)
            except ValueError:
                if needed:
                    raise
        if hi is not None and len(out) > hi:
            raise ValueError(f"{len(out)} required properties exceed maxProperties {hi}")
        if len(out) < lo:
            raise ValueError(f"cannot produce the {lo} properties minProperties asks for")
        return out

    def _child(self, ctx: _Ctx) -> _Ctx:
        if ctx.depth >= _HARD_LIMIT:
            raise ValueError("the schema nests too deeply to produce an instance")
        limited = ctx.limited or ctx.depth + 1 >= _MAX_DEPTH
        return ctx._replace(depth=ctx.depth + 1, limited=limited)


@functools.lru_cache(maxsize=64)
def _validator_for(root_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(root_json))


def _as_schema(schema: Any) -> Any:
    if schema is True or schema == {}:
        return True
    if schema is False:
        raise ValueError("the schema `false` admits no value")
    if not isinstance(schema, dict):
        raise ValueError(f"a schema must be an object or a boolean, not {schema!r}")
    return schema


def _combine(a: Any, b: Any) -> Any:
    """A schema matching exactly what both `a` and `b` match."""
    if a is False or b is False:
        return False
    if a is True or a == {}:
        return b
    if b is True or b == {}:
        return a
    if not isinstance(a, dict) or not isinstance(b, dict) or {"$ref", "allOf"} & {*a, *b}:
        return {"allOf": [a, b]}
    return _merge(a, b)


_TIGHTER: dict[str, Callable[[Any, Any], Any]] = {
    **dict.fromkeys(("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"), max),
    **dict.fromkeys(("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"), min),
    **{"minContains": max, "maxContains": min},
}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, new in b.items():
        old = out.setdefault(key, new)
        if old == new:
            continue
        if key in _TIGHTER:
            out[key] = _TIGHTER[key](old, new)
        elif key == "required":
            out[key] = list(dict.fromkeys([*old, *new]))
        elif key == "type":
            left, right = _as_types(old), _as_types(new)
            both = [t for t in left if t in right]
            both += ["integer"] if {"integer", "number"} <= {*left, *right} else []
            if not both:
                raise ValueError(f"allOf combines incompatible types {old!r} and {new!r}")
            out[key] = list(dict.fromkeys(both))
        elif key == "enum":
            out[key] = [v for v in old if v in new]
            if not out[key]:
                raise ValueError("allOf combines enums with no value in common")
        elif key == "const":
            raise ValueError(f"allOf combines different const values {old!r} and {new!r}")
        elif key in ("properties", "patternProperties", "$defs", "definitions"):
            out[key] = {**old, **{k: _combine(old.get(k, True), v) for k, v in new.items()}}
        elif key in ("items", "additionalProperties", "contains", "propertyNames"):
            out[key] = _combine(old, new)
        elif key in ("anyOf", "oneOf"):
            out[key] = [_combine(x, y) for x in old for y in new]
        elif key == "multipleOf":
            x, y = _to_fraction(old, key), _to_fraction(new, key)
            lcm = Fraction(
                math.lcm(x.numerator, y.numerator), math.gcd(x.denominator, y.denominator)
            )
            out[key] = int(lcm) if lcm.denominator == 1 else float(lcm)
        elif key == "not":
            out[key] = {"anyOf": [old, new]}
        else:
            out[key] = bool(old or new) if key == "uniqueItems" else new
    return out


def _as_types(value: Any) -> list[str]:
    kinds = [value] if isinstance(value, str) else value
    if not isinstance(kinds, list) or not kinds or not all(k in _TYPES for k in kinds):
        raise ValueError(f"invalid type {value!r}")
    return list(dict.fromkeys(kinds))


_TYPE_HINTS = {
    "object": ("properties", "required", "additionalProperties", "patternProperties"),
    "array": ("items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains"),
    "string": ("minLength", "maxLength", "pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}


def _infer_type(schema: dict[str, Any]) -> str:
    return next((t for t, keys in _TYPE_HINTS.items() if any(k in schema for k in keys)), "string")


def _is_type(value: Any, kind: str) -> bool:
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return kind == "number" or isinstance(value, int) or float(value).is_integer()
    python = {"null": type(None), "boolean": bool, "string": str, "array": list, "object": dict}
    return isinstance(value, python[kind])


def _complexity(schema: Any) -> tuple[bool, int]:
    text = json.dumps(schema, default=str)
    return '"$ref"' in text, len(text)


def _count(schema: dict[str, Any], key: str) -> int | None:
    value = schema.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _to_fraction(value: Any, key: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def _bound(
    schema: dict[str, Any],
    plain: str,
    exclusive: str,
    tighter: Callable[[Fraction, Fraction], Fraction],
) -> tuple[Fraction | None, bool]:
    bound = _to_fraction(schema[plain], plain) if plain in schema else None
    strict = schema.get(exclusive)
    if isinstance(strict, bool):  # draft 4: a flag that makes `minimum`/`maximum` exclusive
        return bound, strict and bound is not None
    if strict is None:
        return bound, False
    limit = _to_fraction(strict, exclusive)
    if bound is None or tighter(limit, bound) == limit:
        return limit, True
    return bound, False


def _within(value: float, lo: Fraction, lo_ex: bool, hi: Fraction, hi_ex: bool) -> bool:
    exact = Fraction(value)
    return (exact > lo if lo_ex else exact >= lo) and (exact < hi if hi_ex else exact <= hi)


def _is_multiple(value: float, step: Any) -> bool:
    """The check jsonschema applies for `multipleOf`, float rounding included."""
    if isinstance(step, float):
        quotient = value / step
        return math.isfinite(quotient) and int(quotient) == quotient
    return bool(value % step == 0)


def _freeze(value: Any) -> Any:
    """A hashable key under which JSON-equal values (1 and 1.0, not 1 and true) coincide."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, list):
        return ("a", tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, _freeze(v)) for k, v in value.items()))
    return ("s" if isinstance(value, str) else "n", value)


def _words(rng: random.Random, n: int, sep: str) -> str:
    return sep.join(rng.choice(_WORDS) for _ in range(n))


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2015, 2030):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"


_FORMAT_ALIASES = {"idn-email": "email", "idn-hostname": "hostname", "iri": "uri"}
_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": lambda rng: f"{_date(rng)}T{_time(rng)}",
    "date": _date,
    "time": _time,
    "duration": lambda rng: rng.choice(("P{}D", "PT{}H", "PT{}M", "P{}DT{}H")).format(
        rng.randint(1, 30), rng.randint(1, 23)
    ),
    "email": lambda rng: f"{_words(rng, 2, '.')}@example.com",
    "hostname": lambda rng: f"{_words(rng, 2, '-')}.example.com",
    "ipv4": lambda rng: f"192.0.2.{rng.randint(1, 254)}",
    "ipv6": lambda rng: f"2001:db8::{rng.randint(1, 0xFFFF):x}",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "uri": lambda rng: f"https://example.com/{_words(rng, 2, '/')}",
    "uri-reference": lambda rng: f"/{_words(rng, 2, '/')}",
    "uri-template": lambda rng: f"https://example.com/{_words(rng, 1, '')}/{{id}}",
    "json-pointer": lambda rng: f"/{_words(rng, 1, '')}/{rng.randint(0, 9)}",
    "relative-json-pointer": lambda rng: f"{rng.randint(0, 3)}/{_words(rng, 1, '')}",
    "regex": lambda rng: f"^{_words(rng, 1, '')}[0-9]+$",
}
_FORMATS |= {alias: _FORMATS[name] for alias, name in _FORMAT_ALIASES.items()}
