"""Compiling the supported subset of JSON Schema into one closure per (sub)schema.

A closure takes a value and returns None or the first reason it is invalid. Scalars with only
type-specific keywords (the usual property: ``{"type": "string", "format": "email"}``) get a
specialised closure with no dispatch; everything else gets one generic closure per node, so a
value is never walked through the schema dict at validation time.

Supported: ``type`` (one or a list), ``enum``, ``const``, ``format`` (date-time, date, email, uri
asserted; others annotations), ``minLength``, ``maxLength``, ``pattern``, ``minimum``,
``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``items``, ``minItems``, ``maxItems``,
``uniqueItems``, ``properties``, ``required``, ``additionalProperties``, ``anyOf``, ``allOf``,
``oneOf``, and ``$ref`` of the form ``reach:schemas/<name>`` (a string, the target's external id).
Annotations (``title``, ``description``, ``x-*``...) are ignored; any other keyword is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

__all__ = [
    "REF_PREFIX",
    "Checker",
    "Scalar",
    "SchemaError",
    "accept",
    "check_keywords",
    "compile_node",
    "ref_target",
    "scalar",
]

Checker = Callable[[Any], str | None]

REF_PREFIX = "reach:schemas/"

_ANNOTATIONS = frozenset(
    [
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "readOnly",
        "writeOnly",
        "deprecated",
    ]
)
_STRING_KEYS = frozenset({"minLength", "maxLength", "pattern", "format"})
_NUMBER_KEYS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_ARRAY_KEYS = frozenset({"items", "minItems", "maxItems", "uniqueItems"})
_OBJECT_KEYS = frozenset({"properties", "required", "additionalProperties"})
_OTHER_KEYS = frozenset({"type", "enum", "const", "anyOf", "allOf", "oneOf", "$ref"})
_KEYWORDS = _STRING_KEYS | _NUMBER_KEYS | _ARRAY_KEYS | _OBJECT_KEYS | _OTHER_KEYS

_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "string": (lambda v: type(v) is str, "a string"),
    "number": (lambda v: type(v) is int or type(v) is float, "a number"),
    "integer": (lambda v: type(v) is int or (type(v) is float and v.is_integer()), "an integer"),
    "boolean": (lambda v: type(v) is bool, "a boolean"),
    "object": (lambda v: type(v) is dict, "an object"),
    "array": (lambda v: type(v) is list, "an array"),
    "null": (lambda v: v is None, "null"),
}

# RFC 3339 date-time with a mandatory offset (what ajv-formats accepts), and full-date.
_FORMATS: dict[str, re.Pattern[str]] = {
    "date-time": re.compile(
        r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
        r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
    ),
    "date": re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"),
    "email": re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$"),
    "uri": re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$"),
}


class SchemaError(ValueError):
    """A schema the sandbox cannot enforce; the message names the JSON path of the problem."""


def accept(_value: Any) -> str | None:
    return None


def check_keywords(node: Mapping[str, Any], path: str) -> None:
    for key in node:
        if key not in _KEYWORDS and key not in _ANNOTATIONS and not key.startswith("x-"):
            raise SchemaError(f"{path}: keyword {key!r} is not supported by the sandbox")


def ref_target(node: Any, path: str) -> str | None:
    """The lower-cased schema name or id a ``$ref`` property points at, or None."""
    if not isinstance(node, dict) or "$ref" not in node:
        return None
    ref = node["$ref"]
    if not isinstance(ref, str) or not ref.startswith(REF_PREFIX) or len(ref) == len(REF_PREFIX):
        raise SchemaError(f"{path}.$ref: only {REF_PREFIX}<schemaIdOrName> is supported")
    return ref[len(REF_PREFIX) :].lower()


def compile_node(node: Any, path: str, formats: bool) -> Checker:
    """The closure for one (sub)schema; raises ``SchemaError`` for what it cannot enforce."""
    if node is True or node == {}:
        return accept
    if not isinstance(node, dict):
        raise SchemaError(f"{path}: a schema must be an object")
    check_keywords(node, path)
    if "$ref" in node:
        ref_target(node, path)
        return _scalar("string", [_REF_RULE])
    kind = node.get("type")
    keys = set(node) & _KEYWORDS
    if kind == "string" and keys <= _STRING_KEYS | {"type"}:
        return _scalar("string", _string_rules(node, path, formats))
    if kind in ("number", "integer") and keys <= _NUMBER_KEYS | {"type"}:
        return _scalar(kind, _number_rules(node, path))
    if kind == "boolean" and keys == {"type"}:
        return _scalar("boolean", [])
    return _generic(node, path, formats)


class Scalar(NamedTuple):
    """A plain scalar property: the Python types it admits, the message when the type is wrong,
    and the checks that follow the type (None when there are none)."""

    types: tuple[type, ...]
    type_message: str
    rest: Checker | None


_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "boolean": (bool,),
}


def scalar(node: Any, path: str, formats: bool) -> Scalar | None:
    """The ``Scalar`` form of a property the record validator can check inline, or None.

    Call after ``compile_node`` accepted the node; this only recognises the common shapes.
    """
    if not isinstance(node, dict):
        return None
    if "$ref" in node:
        return Scalar((str,), "must be a string", _REF_RULE)
    kind = node.get("type")
    keys = set(node) & _KEYWORDS
    if not isinstance(kind, str) or kind not in _SCALAR_TYPES:
        return None
    if kind == "string" and keys <= _STRING_KEYS | {"type"}:
        rules = _string_rules(node, path, formats)
    elif kind == "number" and keys <= _NUMBER_KEYS | {"type"}:
        rules = _number_rules(node, path)
    elif kind == "boolean" and keys == {"type"}:
        rules = []
    else:
        return None
    rest = None if not rules else rules[0] if len(rules) == 1 else _chain(rules)
    return Scalar(_SCALAR_TYPES[kind], f"must be {_TYPES[kind][1]}", rest)


def _chain(rules: list[Checker]) -> Checker:
    return lambda v: _first(rules, v)


def _rule(test: Callable[[Any], Any], message: str) -> Checker:
    return lambda v: None if test(v) else message


# A ``$ref`` value is the referenced resource's external id.
_REF_RULE = _rule(len, "must not be empty (an external id)")


def _first(rules: list[Checker], v: Any) -> str | None:
    for rule in rules:
        message = rule(v)
        if message is not None:
            return message
    return None


def _scalar(kind: str, rules: list[Checker]) -> Checker:
    is_type, label = _TYPES[kind]
    type_message = f"must be {label}"
    if not rules:
        return lambda v: None if is_type(v) else type_message
    if len(rules) == 1:
        only = rules[0]
        return lambda v: only(v) if is_type(v) else type_message
    return lambda v: _first(rules, v) if is_type(v) else type_message


def _generic(node: Mapping[str, Any], path: str, formats: bool) -> Checker:
    type_check = _type_check(node["type"], path) if "type" in node else accept
    by_type: dict[type, list[Checker]] = {
        str: _string_rules(node, path, formats),
        int: _number_rules(node, path),
        list: _array_rules(node, path, formats),
        dict: _object_rules(node, path, formats),
    }
    by_type[float] = by_type[int]
    tail: list[Checker] = []
    if "enum" in node or "const" in node:
        tail.append(_enum_rule(node, path))
    tail.extend(_combinators(node, path, formats))
    none: list[Checker] = []

    def check(v: Any) -> str | None:
        return type_check(v) or _first(by_type.get(type(v), none), v) or _first(tail, v)

    return check


def _type_check(spec: Any, path: str) -> Checker:
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
        raise SchemaError(f"{path}.type: {spec!r} is not a JSON Schema type (or list of them)")
    tests = [_TYPES[n][0] for n in names]
    return _rule(
        lambda v: any(t(v) for t in tests), f"must be {' or '.join(_TYPES[n][1] for n in names)}"
    )


def _enum_rule(node: Mapping[str, Any], path: str) -> Checker:
    if "enum" in node and not isinstance(node["enum"], list):
        raise SchemaError(f"{path}.enum: must be a list")
    allowed = list(node["enum"]) if "enum" in node else [node["const"]]
    keys = {_json_key(v) for v in allowed}
    return _rule(lambda v: _json_key(v) in keys, f"must be one of {allowed!r}")


def _json_key(value: Any) -> tuple[str, Any]:
    """A hashable key under JSON equality: 1 equals 1.0, but true never equals 1."""
    if type(value) is bool or value is None:
        return ("literal", value)
    if type(value) is int or type(value) is float:
        return ("number", float(value))
    if type(value) is str:
        return ("string", value)
    return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def _count(node: Mapping[str, Any], key: str, path: str) -> int | None:
    value = node.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise SchemaError(f"{path}.{key}: must be a non-negative integer")
    return value


def _string_rules(node: Mapping[str, Any], path: str, formats: bool) -> list[Checker]:
    rules: list[Checker] = []
    low, high = _count(node, "minLength", path), _count(node, "maxLength", path)
    if low is not None:
        rules.append(_rule(lambda v: len(v) >= low, f"must be at least {low} characters"))
    if high is not None:
        rules.append(_rule(lambda v: len(v) <= high, f"must be at most {high} characters"))
    if "pattern" in node:
        try:
            regex = re.compile(node["pattern"])
        except (re.error, TypeError) as exc:
            raise SchemaError(f"{path}.pattern: not a valid regular expression ({exc})") from exc
        rules.append(_rule(regex.search, f"must match pattern {node['pattern']!r}"))
    fmt = node.get("format")
    if formats and isinstance(fmt, str) and fmt in _FORMATS:
        rules.append(_rule(_FORMATS[fmt].match, f"must be a valid {fmt}"))
    return rules


def _number_rules(node: Mapping[str, Any], path: str) -> list[Checker]:
    comparisons: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
        "minimum": (lambda v, b: v >= b, "at least"),
        "maximum": (lambda v, b: v <= b, "at most"),
        "exclusiveMinimum": (lambda v, b: v > b, "greater than"),
        "exclusiveMaximum": (lambda v, b: v < b, "less than"),
    }
    rules: list[Checker] = []
    for keyword, (compare, words) in comparisons.items():
        if keyword in node:
            bound = node[keyword]
            if type(bound) not in (int, float):
                raise SchemaError(f"{path}.{keyword}: must be a number")
            rules.append(_bounded(compare, bound, f"must be {words} {bound}"))
    return rules


def _bounded(compare: Callable[[Any, Any], bool], bound: float, message: str) -> Checker:
    return lambda v: None if compare(v, bound) else message


def _array_rules(node: Mapping[str, Any], path: str, formats: bool) -> list[Checker]:
    rules: list[Checker] = []
    if "items" in node:
        rules.append(_items(compile_node(node["items"], f"{path}.items", formats)))
    low, high = _count(node, "minItems", path), _count(node, "maxItems", path)
    if low is not None:
        rules.append(_rule(lambda v: len(v) >= low, f"must have at least {low} items"))
    if high is not None:
        rules.append(_rule(lambda v: len(v) <= high, f"must have at most {high} items"))
    if node.get("uniqueItems") is True:
        rules.append(
            _rule(lambda v: len({_json_key(e) for e in v}) == len(v), "items must be unique")
        )
    return rules


def _items(item: Checker) -> Checker:
    def check(v: list[Any]) -> str | None:
        for i, element in enumerate(v):
            message = item(element)
            if message is not None:
                return f"item {i}: {message}"
        return None

    return check


def _object_rules(node: Mapping[str, Any], path: str, formats: bool) -> list[Checker]:
    if not _OBJECT_KEYS & set(node):
        return []
    raw_props = node.get("properties", {})
    if not isinstance(raw_props, dict):
        raise SchemaError(f"{path}.properties: must be an object")
    props = {
        name: compile_node(sub, f"{path}.properties.{name}", formats)
        for name, sub in raw_props.items()
    }
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{path}.required: must be a list of property names")
    spec = node.get("additionalProperties", True)
    extra = None if spec is False else compile_node(spec, f"{path}.additionalProperties", formats)

    def check(v: dict[str, Any]) -> str | None:
        for name in required:
            if name not in v:
                return f"missing required property {name!r}"
        for key, value in v.items():
            inner = props.get(key, extra)
            if inner is None:
                return f"property {key!r} is not allowed"
            message = inner(value)
            if message is not None:
                return f"{key}: {message}"
        return None

    return [check]


def _combinators(node: Mapping[str, Any], path: str, formats: bool) -> list[Checker]:
    rules: list[Checker] = []
    for keyword in ("anyOf", "allOf", "oneOf"):
        if keyword not in node:
            continue
        subs = node[keyword]
        if not isinstance(subs, list) or not subs:
            raise SchemaError(f"{path}.{keyword}: must be a non-empty list of schemas")
        compiled = [compile_node(s, f"{path}.{keyword}[{i}]", formats) for i, s in enumerate(subs)]
        rules.append(_rule(_combined(keyword, compiled), f"does not satisfy {keyword}"))
    return rules


def _combined(keyword: str, compiled: list[Checker]) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:
        passed = sum(1 for check in compiled if check(v) is None)
        if keyword == "allOf":
            return passed == len(compiled)
        return passed >= 1 if keyword == "anyOf" else passed == 1

    return test
