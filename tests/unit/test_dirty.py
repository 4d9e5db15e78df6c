"""Dirty keys as encoded match schemas/dirty-key.schema.json, and round-trip.

``jsonschema`` is not a dependency, so ``schema_problems`` checks the small subset of JSON Schema
(draft 2020-12) that reach-sync's schema files use, and refuses any keyword it does not know: a
schema can never pass because the checker silently ignored part of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.router.dirty import Cause, DirtyKey, decode_dirty, dirty_message_key, encode_dirty

SCHEMAS = Path(__file__).parents[2] / "schemas"
_ANNOTATIONS = {"$schema", "$id", "$defs", "$comment", "title", "description", "examples"}
_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return schema


def schema_problems(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``instance`` breaks ``schema``, as ``path: reason``; empty when it is valid."""
    return _problems(instance, schema, schema, "$")


def _problems(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str) -> list[str]:
    out: list[str] = []
    for keyword, arg in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            raise AssertionError(f"{at}: the test's checker does not support {keyword!r}")
        out += check(value, arg, schema, root, at)
    return out


Check = Callable[[Any, Any, dict[str, Any], dict[str, Any], str], list[str]]


def _type(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    names = [arg] if isinstance(arg, str) else arg
    if any(_TYPES[n](value) for n in names):
        return []
    return [f"{at}: is {type(value).__name__}, not {' or '.join(names)}"]


def _required(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [f"{at}: {name} is required" for name in arg if name not in value]


def _properties(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    if not isinstance(value, dict):
        return []
    out: list[str] = []
    for name, sub in arg.items():
        if name in value:
            out += _problems(value[name], sub, root, f"{at}.{name}")
    return out


def _additional(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    assert arg is False, "only additionalProperties: false is supported"
    if not isinstance(value, dict):
        return []
    return [f"{at}: {k} is not allowed" for k in value if k not in schema.get("properties", {})]


def _ref(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    """``#/...`` in this schema, or ``other.schema.json#/...`` beside it in schemas/."""
    document, _, pointer = arg.partition("#")
    if document:
        root = load_schema(document)
    target: Any = root
    for part in pointer.strip("/").split("/") if pointer.strip("/") else ():
        target = target[part]
    return _problems(value, target, root, at)


def _any_of(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    if any(not _problems(value, sub, root, at) for sub in arg):
        return []
    return [f"{at}: matches none of anyOf"]


def _one_of(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    matching = sum(1 for sub in arg if not _problems(value, sub, root, at))
    return [] if matching == 1 else [f"{at}: matches {matching} of oneOf, not exactly one"]


def _not(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    return [f"{at}: matches a schema it must not"] if not _problems(value, arg, root, at) else []


def _items(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
    if not isinstance(value, list):
        return []
    return [p for i, item in enumerate(value) for p in _problems(item, arg, root, f"{at}[{i}]")]


_STRING_BOUNDS: dict[str, Callable[[str, Any], bool]] = {
    "minLength": lambda v, n: len(v) >= n,
    "maxLength": lambda v, n: len(v) <= n,
    "pattern": lambda v, p: re.search(p, v) is not None,
}
_NUMBER_BOUNDS: dict[str, Callable[[float, Any], bool]] = {
    "minimum": lambda v, n: v >= n,
    "maximum": lambda v, n: v <= n,
}
_ARRAY_BOUNDS: dict[str, Callable[[list[Any], Any], bool]] = {
    "minItems": lambda v, n: len(v) >= n,
    "maxItems": lambda v, n: len(v) <= n,
}
_VALUE_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "enum": lambda v, allowed: v in allowed,
    "const": lambda v, c: v == c,
}


def _bound(keyword: str) -> Check:
    """A keyword that holds or fails for one value, applying only to its kind of value."""

    def check(value: Any, arg: Any, schema: Any, root: Any, at: str) -> list[str]:
        if keyword in _STRING_BOUNDS:
            holds = not isinstance(value, str) or _STRING_BOUNDS[keyword](value, arg)
        elif keyword in _NUMBER_BOUNDS:
            holds = not _TYPES["number"](value) or _NUMBER_BOUNDS[keyword](value, arg)
        elif keyword in _ARRAY_BOUNDS:
            holds = not isinstance(value, list) or _ARRAY_BOUNDS[keyword](value, arg)
        else:
            holds = _VALUE_BOUNDS[keyword](value, arg)
        return [] if holds else [f"{at}: fails {keyword} {arg!r}"]

    return check


_KEYWORDS: dict[str, Check] = {
    "type": _type,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "$ref": _ref,
    "anyOf": _any_of,
    "oneOf": _one_of,
    "not": _not,
    "items": _items,
    **{k: _bound(k) for k in (*_STRING_BOUNDS, *_NUMBER_BOUNDS, *_ARRAY_BOUNDS, *_VALUE_BOUNDS)},
}


# --- the dirty key --------------------------------------------------------------------------------

SCHEMA = load_schema("dirty-key.schema.json")
CDC = Cause(
    kind="cdc",
    table="public.transactions",
    op="u",
    topic="shop.public.transactions",
    partition=3,
    offset=1234,
    source_ts_ms=1_795_387_787_004,
    lsn=22_655_104,
)


@pytest.mark.parametrize(
    "key",
    [
        DirtyKey("customers", 102, CDC, enqueued_ms=1_795_387_787_100),
        DirtyKey("transactions", "tx-302", CDC),
        DirtyKey("customers", 7, Cause(kind="resync")),
        DirtyKey("customers", 7, Cause(kind="backfill", traceparent="00-ab-cd-01")),
        DirtyKey("customers", 7, CDC, 1, triggers=40, later_causes=(CDC,) * 7),
    ],
)
def test_encoded_dirty_keys_follow_the_schema_and_round_trip(key: DirtyKey) -> None:
    raw = encode_dirty(key)
    assert schema_problems(json.loads(raw), SCHEMA) == []
    assert decode_dirty(raw) == key


def test_defaults_are_left_out_of_the_encoding() -> None:
    encoded = json.loads(encode_dirty(DirtyKey("customers", 7, Cause(kind="resync"))))
    assert encoded == {"resource": "customers", "id": 7, "cause": {"kind": "resync"}}


def test_the_schema_rejects_what_the_syncer_could_not_use() -> None:
    good = json.loads(encode_dirty(DirtyKey("customers", 1, CDC)))
    assert schema_problems({**good, "id": 1.5}, SCHEMA) == ["$.id: is float, not integer or string"]
    assert schema_problems({**good, "id": None}, SCHEMA)
    assert schema_problems({k: v for k, v in good.items() if k != "cause"}, SCHEMA) == [
        "$: cause is required"
    ]
    assert schema_problems({**good, "resource": "a/b"}, SCHEMA)
    assert schema_problems({**good, "cause": {"table": "t"}}, SCHEMA) == [
        "$.cause: kind is required"
    ]
    assert schema_problems({**good, "row": {"email": "x"}}, SCHEMA) == ["$: row is not allowed"]


def test_the_message_key_is_resource_slash_id() -> None:
    assert dirty_message_key("customers", 102) == b"customers/102"
    assert dirty_message_key("transactions", "tx-1") == b"transactions/tx-1"
