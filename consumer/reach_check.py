"""The definition checked against the destination's Reach schemas, before any work starts.

A definition can be well formed, and sound against the database, and still not fit the Reach
schema it sends to: a field ``emial`` Reach does not know, a required ``customerId`` not mapped,
``format: decimal_cents`` for an ``integer`` property, a ``$ref`` to a schema nothing sends.
Each passes YAML validation and fails only in Reach, record by record (every one refused, or
parked and dropped), after it was sent. So ``validate --reach`` and ``run`` (when it sends to
Reach) read the schema definitions (``GET /partner/schema-definitions``, docs/reach-api.md §3.8)
and compare each resource's mapping with its ``reach_schema``, from what each format's JSON
output always is (consumer/sink/projection.py), never from data. Every problem is a
``path: reason`` line, for DefinitionError to place in the file.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from consumer.config import Resource, SyncDefinition
from consumer.config_file import located
from consumer.errors import Retryable
from consumer.reach.client import ReachClient
from consumer.reach.schemas import SchemaDefinition

__all__ = ["CHECK_TIMEOUT_S", "check_reach", "reach_problems"]

# The check reads one small list; it never waits longer than this for it, whatever
# destination.timeout_s says (a slow Reach delays `run` at most this long).
CHECK_TIMEOUT_S = 10.0
REF_PREFIX = "reach:schemas/"  # docs/reach-api.md §4.5
# How deep a property's anyOf/allOf/items are followed; deeper is taken as fitting.
_MAX_DEPTH = 16
# String formats a value of a known shape can never satisfy unless it is that format: a
# date-time string is never a date, an email or a URI, a hex digest none of them.
_ASSERTED_FORMATS = frozenset({"date-time", "date", "time", "email", "uri", "uuid"})
# JSON Schema types a value of each JSON type satisfies (an integer is also a number).
_SATISFIES = {
    "integer": frozenset({"integer", "number"}),
    "number": frozenset({"number"}),
    "string": frozenset({"string"}),
    "boolean": frozenset({"boolean"}),
    "array": frozenset({"array"}),
}
# Property keywords that say what a value may be; the rest (bounds, patterns) are left alone.
_SHOWN = ("$ref", "type", "format", "enum", "const", "items", "anyOf", "oneOf", "allOf")
_SHOWN_MAX_CHARS = 120


@dataclass(frozen=True, slots=True)
class _Output:
    """What a field's JSON value always is, null aside (an empty value is sent as null)."""

    type: str  # its JSON Schema type
    said: str
    string_format: str | None = None  # the string format it always has, if any
    items: _Output | None = None


_STRING = _Output("string", "a string")
# Each format's JSON output (consumer/sink/projection.py); raw (and a format not known here)
# sends whatever the column holds, so nothing is checked for it.
_FORMATS = {
    "string": _STRING,
    "integer": _Output("integer", "an integer"),
    "decimal_cents": _Output("number", "a number (cents / 100)"),
    "decimal": _Output("number", "a decimal number"),
    "boolean": _Output("boolean", "a boolean"),
    "datetime": _Output("string", "an RFC 3339 date-time string", "date-time"),
    "date": _Output("string", "a full-date string (YYYY-MM-DD)", "date"),
}
_HASHED = _Output("string", "a hex SHA-256 string", "sha256-hex")
_GROUPS = _Output("array", "an array of group names (strings)", items=_STRING)


def check_reach(
    definition: SyncDefinition, path: Path, *, transport: httpx.AsyncBaseTransport | None = None
) -> None:
    """Raise DefinitionError placing every problem in ``path``'s lines; Retryable when Reach
    cannot be reached or fails (5xx, 429), ConfigurationError when it refuses (401/403: the
    credential) or answers outside its contract. ``transport``: the test seam."""
    schemas = asyncio.run(_read_schemas(definition, transport))
    problems = reach_problems(definition, schemas)
    if problems:
        raise located(path, problems)


async def _read_schemas(
    definition: SyncDefinition, transport: httpx.AsyncBaseTransport | None
) -> list[SchemaDefinition]:
    destination = definition.destination
    bounded = destination.model_copy(
        update={"timeout_s": min(destination.timeout_s, CHECK_TIMEOUT_S)}
    )
    try:
        async with ReachClient(bounded, transport=transport) as client:
            return await client.schema_definitions()
    except Retryable as exc:
        raise Retryable(
            f"Reach unavailable for the definition check: {exc}", exc.retry_after_s
        ) from exc


def reach_problems(definition: SyncDefinition, schemas: Sequence[SchemaDefinition]) -> list[str]:
    """Every problem ``schemas`` (Reach's, as listed) show in ``definition``, as
    ``path: reason`` lines, resource by resource in the definition's order."""
    by_name = {s.name.lower(): s for s in schemas}
    by_id = {s.id: s for s in schemas if s.id is not None}
    sent = {r.reach_schema.lower() for r in definition.resources.values()}
    problems: list[str] = []
    for name, resource in definition.resources.items():
        where = f"resources.{name}"
        schema = by_name.get(resource.reach_schema.lower())
        if schema is None:
            problems.append(f"{where}.reach_schema: {_no_schema(resource.reach_schema, schemas)}")
            continue
        problems += _required(where, resource, schema)
        problems += _fields(where, resource, schema, by_name, by_id, sent)
        problems += _groups(where, resource, schema)
    return problems


def _no_schema(wanted: str, schemas: Sequence[SchemaDefinition]) -> str:
    names = sorted((s.name for s in schemas), key=str.lower)
    if not names:
        return f"Reach has no schema {wanted} (it has none: create it, docs/reach-api.md §3.8)"
    return f"Reach has no schema {wanted}{_hint(wanted, names)} (it has {', '.join(names)})"


def _required(where: str, resource: Resource, schema: SchemaDefinition) -> list[str]:
    required = schema.schema.get("required")
    names = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    external_id = schema.external_id_field
    if external_id is not None and external_id not in names:
        names.insert(0, external_id)
    sent = set(resource.mapping)
    if resource.groups is not None:
        sent.add(resource.groups.field)
    problems = []
    for field in dict.fromkeys(names):
        if field in sent:
            continue
        role = " (its external id field)" if field == external_id else ""
        problems.append(
            f"{where}.mapping: Reach schema {schema.name} requires {field}{role}, which is not "
            "mapped: Reach would refuse every record"
        )
    return problems


def _fields(
    where: str,
    resource: Resource,
    schema: SchemaDefinition,
    by_name: dict[str, SchemaDefinition],
    by_id: dict[str, SchemaDefinition],
    sent: set[str],
) -> list[str]:
    properties = _properties(schema)
    problems = []
    for field, mapping in resource.mapping.items():
        at = f"{where}.mapping.{field}"
        prop = properties.get(field)
        if prop is None:
            unknown = _unknown(field, schema, properties)
            if unknown is not None:
                problems.append(f"{at}: {unknown}")
            continue
        output = _HASHED if mapping.pii == "hash" else _FORMATS.get(mapping.format)
        if output is not None and not _fits(output, prop):
            cause = "pii: hash" if mapping.pii == "hash" else f"format {mapping.format}"
            key = "pii" if mapping.pii == "hash" else "format"
            problems.append(
                f"{at}.{key}: {cause} sends {output.said}; {schema.name}.{field} is "
                f"{_shown(prop)}, which does not accept that"
            )
        target = _ref(prop)
        if target is not None:
            reason = _ref_problem(target, by_name, by_id, sent)
            if reason is not None:
                problems.append(
                    f"{at}: {schema.name}.{field} refers to {REF_PREFIX}{target}, {reason}"
                )
    return problems


def _groups(where: str, resource: Resource, schema: SchemaDefinition) -> list[str]:
    if resource.groups is None:
        return []
    field = resource.groups.field
    at = f"{where}.groups.field"
    prop = _properties(schema).get(field)
    if prop is None:
        unknown = _unknown(field, schema, _properties(schema))
        return [] if unknown is None else [f"{at}: {unknown}"]
    if not _fits(_GROUPS, prop):
        return [
            f"{at}: the groups are sent as {_GROUPS.said}; {schema.name}.{field} is "
            f"{_shown(prop)}, which does not accept that"
        ]
    return []


def _properties(schema: SchemaDefinition) -> dict[str, Any]:
    properties = schema.schema.get("properties")
    return properties if isinstance(properties, dict) else {}


def _unknown(field: str, schema: SchemaDefinition, properties: dict[str, Any]) -> str | None:
    """Why a field the schema does not list is a problem; None when the schema lists no
    properties and allows any (a free-form schema: nothing to compare with)."""
    closed = schema.schema.get("additionalProperties") is False
    if not properties and not closed:
        return None
    hint = _hint(field, list(properties))
    if closed:
        return (
            f"Reach schema {schema.name} has no property {field}{hint} and allows no other "
            "(additionalProperties: false): Reach would refuse every record"
        )
    return (
        f"Reach schema {schema.name} has no property {field}{hint}: Reach keeps it as an "
        "undeclared field, which is probably a misspelling"
    )


def _hint(wanted: str, names: list[str]) -> str:
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(wanted.lower(), list(lowered), n=1, cutoff=0.75)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def _ref(prop: Any) -> str | None:
    """The schema a ``$ref`` property points at (``reach:schemas/<name or id>``), or None."""
    ref = prop.get("$ref") if isinstance(prop, dict) else None
    if isinstance(ref, str) and ref.startswith(REF_PREFIX) and len(ref) > len(REF_PREFIX):
        return ref[len(REF_PREFIX) :]
    return None


def _ref_problem(
    target: str,
    by_name: dict[str, SchemaDefinition],
    by_id: dict[str, SchemaDefinition],
    sent: set[str],
) -> str | None:
    schema = by_name.get(target.lower()) or by_id.get(target)
    if schema is None:
        return "a schema Reach does not have: Reach would refuse or park every record"
    if schema.name.lower() not in sent:
        return (
            f"which no resource of this definition sends: Reach parks records whose reference "
            f"target was never sent (destination.dependency_wait_timeout_s), then drops them; "
            f"send {schema.name} too, or map this field to a plain string property"
        )
    return None


def _fits(output: _Output, node: Any, depth: int = 0) -> bool:
    """Whether a value of ``output``'s kind can satisfy the property ``node`` as far as its
    type, format, enum, const, $ref, items and anyOf/oneOf/allOf tell (not its bounds)."""
    if depth > _MAX_DEPTH:
        return True
    if not isinstance(node, dict):
        return node is not False  # true or {}: anything; false: nothing
    if "$ref" in node:
        # The referenced resource's external id, a string (docs/reach-api.md §4.5); siblings of
        # a $ref are not read (draft-07), so neither are they here.
        return output.type == "string"
    kinds = node.get("type")
    if isinstance(kinds, str):
        kinds = [kinds]
    if isinstance(kinds, list) and not _SATISFIES[output.type] & set(kinds):
        return False
    if output.type == "string" and not _format_fits(output, node.get("format")):
        return False
    items = node.get("items")
    if output.items is not None and items is not None and not _fits(output.items, items, depth + 1):
        return False
    return _values_fit(output, node) and _branches_fit(output, node, depth)


def _values_fit(output: _Output, node: dict[str, Any]) -> bool:
    """``const`` and ``enum``: one of the values is of the output's type."""
    if "const" in node and not _value_fits(output, node["const"]):
        return False
    enum = node.get("enum")
    return not isinstance(enum, list) or any(_value_fits(output, value) for value in enum)


def _branches_fit(output: _Output, node: dict[str, Any], depth: int) -> bool:
    """``anyOf`` and ``oneOf``: some branch fits; ``allOf``: every branch does."""
    for either in ("anyOf", "oneOf"):
        branches = node.get(either)
        if (
            isinstance(branches, list)
            and branches
            and not any(_fits(output, branch, depth + 1) for branch in branches)
        ):
            return False
    every = node.get("allOf")
    return not isinstance(every, list) or all(_fits(output, branch, depth + 1) for branch in every)


def _format_fits(output: _Output, wanted: Any) -> bool:
    if output.string_format is None or not isinstance(wanted, str):
        return True  # any string, or a format nobody asserts
    return wanted == output.string_format or wanted not in _ASSERTED_FORMATS


def _value_fits(output: _Output, value: Any) -> bool:
    """Whether ``value`` (of an enum or const) is of the output's JSON type (a number may
    equal an integer: 5.0 is 5)."""
    kind = _json_type(value)
    return kind == output.type or (output.type == "number" and kind == "integer")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _shown(prop: Any) -> str:
    """The property's type, as the schema writes it (its type-defining keywords only)."""
    shown = {k: prop[k] for k in _SHOWN if k in prop} if isinstance(prop, dict) else prop
    text = json.dumps(shown, separators=(", ", ": "), ensure_ascii=False)
    if len(text) > _SHOWN_MAX_CHARS:
        text = text[: _SHOWN_MAX_CHARS - 1] + "…"
    return text
