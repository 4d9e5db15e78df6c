"""Projection: a recomputed row becomes the record Reach receives, and its hash.

Every record is the entity's full projected state: every mapped field is present, with an
explicit ``null`` for a value that became empty, because Reach's upsert keeps absent fields and
deletes a field only on ``null`` (docs/reach-api.md §3.1). Only mapped fields leave the partner's
system; ``pii: hash`` fields leave as a SHA-256. The hash is over the canonical JSON of exactly
what is sent, so any change that matters to Reach changes it and nothing else does.

Numbers go out exactly: a decimal whose shortest float text is not its own value goes as its
own digits (an ``orjson.Fragment``, pre-serialised JSON), so every encoder of records must carry
a Fragment as the JSON it holds (``json_text``; msgspec through ``msgspec_hook``). Fragments do
not compare equal: compare records by their JSON.

A value no format can send is its entity's BadRecord (dead-lettered alone), whatever fails:
NaN and infinite numbers (JSON has none, and orjson would quietly send ``null``, which deletes
the field in Reach), numbers beyond a double's range, bytes that are not UTF-8 text, anything
the format or JSON rejects. The reason names the field and never the value (it may be PII).
Values the driver cannot load at all (``infinity`` and BC timestamps and dates, years after
9999) fail in recompute.py, naming the field as well.
"""

from __future__ import annotations

import hashlib
import math
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import msgspec
import orjson

from consumer.config import FieldMapping, Resource
from consumer.errors import BadRecord

__all__ = [
    "GROUP_COLUMN_PREFIX",
    "WITHHELD",
    "Projected",
    "json_text",
    "msgspec_hook",
    "payload_hash",
    "project",
    "projector",
]

# Recompute adds one boolean column per group rule, named with this prefix (recompute.py).
GROUP_COLUMN_PREFIX = "__group_"

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
# What a reason says instead of a value it would quote (reasons never hold values).
WITHHELD = "<value>"
# The most decimals an exact number is sent with: a numeric's own limit, so every numeric goes;
# only a text read by ``decimal`` could ask for more (``1e-999999999`` would be that many digits).
MAX_DECIMALS = 16383
# A decimal number as text (``decimal`` reads these from a text column); ASCII digits only.
_DECIMAL_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Projected:
    """What is sent for one entity, where to, and the hash that dedup compares."""

    tenant: str
    external_id: str
    record: dict[str, Any]
    hash: str


def _finite(value: Any) -> None:
    if isinstance(value, Decimal):
        finite = value.is_finite()  # math.isfinite would say no to a Decimal above float's range
    else:
        finite = not isinstance(value, float) or math.isfinite(value)
    if not finite:
        raise ValueError("not a finite number (NaN or infinite)")


def json_text(value: orjson.Fragment) -> str:
    """The JSON a Fragment holds (a Fragment shows nothing of it otherwise)."""
    return orjson.dumps(value).decode()


def msgspec_hook(value: Any) -> Any:
    """``enc_hook`` for a msgspec encoder of records: a Fragment as the JSON it holds."""
    if isinstance(value, orjson.Fragment):
        return msgspec.Raw(orjson.dumps(value))
    raise NotImplementedError(f"Encoding objects of type {type(value).__name__} is unsupported")


def _exact(value: Decimal) -> orjson.Fragment:
    """A finite decimal as the JSON number of its own digits, never in exponent form (``1E-7``
    is ``0.0000001``), its scale kept (``1.50``)."""
    _finite(value)
    if math.isinf(float(value)):
        # JSON could carry it, but a parser that reads numbers as doubles (JavaScript's, Python's
        # json) makes it infinite, which JSON cannot send back.
        raise ValueError("a number beyond a double's range")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMALS:
        raise ValueError(f"a number with more than {MAX_DECIMALS} decimals")
    return orjson.Fragment(format(value, "f"))


def _number(value: Decimal) -> float | orjson.Fragment:
    """A finite decimal as a JSON number of the same value, as its float where the float's
    shortest text is that value (the bytes these values were always sent as), else its own
    digits (``_exact``)."""
    _finite(value)
    number = float(value)
    if math.isfinite(number) and Decimal(repr(number)) == value:
        return number
    return _exact(value)


def _text(value: bytes | bytearray | memoryview) -> str:
    """Bytes (a bytea column) as the UTF-8 text they hold."""
    try:
        return bytes(value).decode()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"bytes that are not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc


def _as_string(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return _text(value)
    _finite(value)
    return value if isinstance(value, str) else str(value)


def _as_integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal | float) and value == int(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"not an integer: {type(value).__name__}")


def _as_decimal_cents(value: Any) -> float | orjson.Fragment:
    # Exact: the float (as always) wherever it is (below 10**15 cents), the digits beyond.
    return _number(Decimal(f"{_as_integer(value)}e-2"))


def _as_decimal(value: Any) -> float | orjson.Fragment:
    """A number exactly as the database holds it (a numeric's own digits and scale); a float
    (real, double precision) is a float already and goes as its shortest text."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not _DECIMAL_TEXT.fullmatch(text):
            raise ValueError("text that is not a decimal number")
        return _exact(Decimal(text))
    if isinstance(value, int | Decimal):
        return _exact(Decimal(value))
    raise ValueError(f"not a number: {type(value).__name__}")


def _as_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"not a boolean: {type(value).__name__}")


def _as_datetime(value: Any) -> str:
    """ISO-8601 in UTC with a Z. A timestamp without zone is taken as UTC (document it).
    Milliseconds, or microseconds when the value has any below the millisecond: nothing is
    lost, and a value that never had any is sent as it always was."""
    if isinstance(value, datetime):
        moment = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        digits = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
        return moment.isoformat(timespec=digits).replace("+00:00", "Z")
    if isinstance(value, date):
        return f"{value.isoformat()}T00:00:00.000Z"
    if isinstance(value, str):
        return _as_datetime(datetime.fromisoformat(value))
    raise ValueError(f"not a datetime: {type(value).__name__}")


def _as_date(value: Any) -> str:
    if isinstance(value, datetime):
        return (
            value.astimezone(UTC).date().isoformat() if value.tzinfo else value.date().isoformat()
        )
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return date.fromisoformat(value).isoformat()
    raise ValueError(f"not a date: {type(value).__name__}")


def _as_raw(value: Any) -> Any:
    """As JSON can carry it, arrays and objects (json, jsonb) included."""
    if isinstance(value, datetime | date):
        return _as_datetime(value)
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, float):
        _finite(value)
        return value
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return _exact(Decimal(value))  # beyond what orjson writes as an integer (from jsonb)
    if isinstance(value, bytes | bytearray | memoryview):
        return _text(value)
    if isinstance(value, list | tuple):
        return [_as_raw(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_raw(item) for key, item in value.items()}
    return value


_FORMATTERS: dict[str, Callable[[Any], Any]] = {
    "raw": _as_raw,
    "string": _as_string,
    "integer": _as_integer,
    "decimal_cents": _as_decimal_cents,
    "decimal": _as_decimal,
    "boolean": _as_boolean,
    "datetime": _as_datetime,
    "date": _as_date,
}


def _hash_pii(value: Any) -> str:
    text = json_text(value) if isinstance(value, orjson.Fragment) else str(value)
    return hashlib.sha256(text.strip().lower().encode()).hexdigest()


def _without(value: Any, message: str) -> str:
    """``message`` with the value's text withheld (a parser's message may quote it). Only where
    it stands alone: the text of a float infinity, ``inf``, is no part of ``infinite``."""
    try:
        texts = {repr(value), repr(str(value))}
    except Exception:  # a value with no text: none of it can be quoted
        return message
    for text in texts:
        message = re.sub(rf"(?<!\w){re.escape(text)}(?!\w)", WITHHELD, message)
    return message


def _field_value(name: str, mapping: FieldMapping, row: Mapping[str, Any]) -> Any:
    value = row.get(mapping.column)
    if value is None:
        return None
    try:
        _finite(value)
        formatted = _FORMATTERS[mapping.format](value)
        _finite(formatted)  # e.g. cents beyond float's range
        return _hash_pii(formatted) if mapping.pii == "hash" else formatted
    except Exception as exc:
        # Whatever fails, it is this entity's alone. The reason names the field and the format,
        # never the value (it may be PII).
        reason = _without(value, str(exc) or type(exc).__name__)
        raise BadRecord(
            f"field {name!r} (column {mapping.column!r}) as {mapping.format}: {reason}"
        ) from exc


def _identity(column: str, row: Mapping[str, Any]) -> str:
    try:
        return _as_string(row[column])
    except ValueError as exc:
        raise BadRecord(f"column {column!r}: {exc}") from exc


def _hash_of(mapping: Mapping[str, FieldMapping], record: Mapping[str, Any]) -> str:
    """The payload hash; BadRecord naming the field when a raw value is no JSON at all."""
    try:
        return payload_hash(record)
    except orjson.JSONEncodeError as exc:
        for name, value in record.items():
            try:
                orjson.dumps(value)
            except orjson.JSONEncodeError as field_exc:
                column = mapping[name].column if name in mapping else name
                raise BadRecord(f"field {name!r} (column {column!r}): {field_exc}") from exc
        raise BadRecord(f"the record is no JSON: {exc}") from exc


def payload_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of a record."""
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def project(resource: Resource, row: Mapping[str, Any]) -> Projected:
    """The full record for one recomputed row; BadRecord when a value cannot be formatted."""
    return projector(resource)(row)


# --- the per-resource projector ------------------------------------------------------------------
# A window projects thousands of rows of one resource: each field's converter is chosen once,
# and the common types take a fast path giving exactly what the formatters above give; any
# other value (or one the fast path is unsure of) goes through ``_field_value``, errors included.

_SLOW: Any = object()  # a fast converter's "not mine": the general path decides
# Cents below this go as ``cents / 100``: the correctly rounded float, whose shortest text is
# that value (at most 15 significant digits round-trip through a double), as ``_number`` checks.
_CENTS_FAST = 10**15
_RAW_INT_MIN, _RAW_INT_END = -(2**63), 2**64
_INT_TEXT_MAX = 10**4000  # below Python's int-to-text digit limit


def _fast_raw(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is bool:
        return value
    if kind is int:
        return value if _RAW_INT_MIN <= value < _RAW_INT_END else _SLOW
    if kind is float:
        return value if math.isfinite(value) else _SLOW
    return _SLOW


def _fast_string(value: Any) -> Any:
    """``_as_string`` for the common types: a string field's, a key's or a tenant's."""
    kind = type(value)
    if kind is str:
        return value
    if kind is int and -_INT_TEXT_MAX < value < _INT_TEXT_MAX:
        return str(value)
    return _SLOW


def _fast_integer(value: Any) -> Any:
    return value if type(value) is int else _SLOW


def _fast_decimal_cents(value: Any) -> Any:
    kind = type(value)
    if kind is int:
        cents = value
    elif kind is Decimal and value.is_finite() and value == (cents := int(value)):
        pass
    else:
        return _SLOW
    return cents / 100 if -_CENTS_FAST < cents < _CENTS_FAST else _SLOW


def _fast_decimal(value: Any) -> Any:
    return value if type(value) is float and math.isfinite(value) else _SLOW


def _fast_boolean(value: Any) -> Any:
    return value if type(value) is bool else _SLOW


def _fast_datetime(value: Any) -> Any:
    """``_as_datetime`` of a datetime; ``isoformat()`` shows microseconds when it has some."""
    if type(value) is not datetime:
        return _SLOW
    zone = value.tzinfo
    if zone is None:
        moment, suffix = value, 0
    elif zone is UTC or not value.utcoffset():  # already UTC's fields, shown with "+00:00"
        moment, suffix = value, -6
    else:
        moment, suffix = value.astimezone(UTC), -6
    if moment.microsecond % 1000:
        text = moment.isoformat()
    else:
        text = moment.isoformat(timespec="milliseconds")
    return (text[:suffix] if suffix else text) + "Z"


def _fast_none(value: Any) -> Any:
    return _SLOW


_FAST: dict[str, Callable[[Any], Any]] = {
    "raw": _fast_raw,
    "string": _fast_string,
    "integer": _fast_integer,
    "decimal_cents": _fast_decimal_cents,
    "decimal": _fast_decimal,
    "boolean": _fast_boolean,
    "datetime": _fast_datetime,
    "date": _fast_none,
}


Projector = Callable[[Mapping[str, Any]], Projected]


def _compile(resource: Resource) -> Projector:
    """``project`` for one resource, its choices made once."""
    fields = tuple(
        (name, m.column, _fast_none if m.pii == "hash" else _FAST[m.format], m)
        for name, m in resource.mapping.items()
    )
    # Nothing here holds the resource itself: the cache of projectors keeps it only weakly.
    key, tenant, mappings = resource.key, resource.tenant, resource.mapping
    groups = resource.groups
    group_field = None if groups is None else groups.field
    # Sorted by name up front: the members then come out sorted, as project sends them.
    group_columns = (
        ()
        if groups is None
        else tuple(
            (GROUP_COLUMN_PREFIX + name, name) for name in sorted(r.name for r in groups.rules)
        )
    )

    def projected(row: Mapping[str, Any]) -> Projected:
        get = row.get
        if get(key) is None or get(tenant) is None:
            missing = [c for c in (key, tenant) if get(c) is None]
            raise BadRecord(f"the query returned no value for {', '.join(missing)}")
        record: dict[str, Any] = {}
        for name, column, fast, mapping in fields:
            value = get(column)
            if value is not None:
                try:
                    formatted = fast(value)
                except Exception:
                    formatted = _SLOW
                value = _field_value(name, mapping, row) if formatted is _SLOW else formatted
            record[name] = value
        if group_field is not None:
            record[group_field] = [name for column, name in group_columns if get(column)]
        tenant_text = _fast_string(row[tenant])
        if tenant_text is _SLOW:
            tenant_text = _identity(tenant, row)
        key_text = _fast_string(row[key])
        if key_text is _SLOW:
            key_text = _identity(key, row)
        return Projected(tenant_text, key_text, record, _hash_of(mappings, record))

    return projected


_projectors: dict[int, tuple[weakref.ref[Resource], Projector]] = {}


def projector(resource: Resource) -> Projector:
    """``project`` bound to one resource, compiled once per resource object (kept while it
    lives): what delivery calls for every row of a window."""
    entry = _projectors.get(id(resource))
    if entry is not None and entry[0]() is resource:
        return entry[1]
    compiled = _compile(resource)
    rid, projectors = id(resource), _projectors  # kept: module globals are gone at exit

    def forget(ref: weakref.ref[Resource]) -> None:
        if (kept := projectors.get(rid)) is not None and kept[0] is ref:
            del projectors[rid]

    projectors[rid] = (weakref.ref(resource, forget), compiled)
    return compiled
