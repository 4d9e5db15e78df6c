"""Projection: a recomputed row becomes the record Reach receives, and its hash.

Every record is the entity's full projected state: every mapped field is present, with an
explicit ``null`` for a value that became empty, because Reach's upsert keeps absent fields and
deletes a field only on ``null`` (reach-api.md §3.1). Only mapped fields leave the partner's
system; ``pii: hash`` fields leave as a SHA-256. The hash is over the canonical JSON of exactly
what is sent, so any change that matters to Reach changes it and nothing else does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson

from consumer.config import FieldMapping, Resource
from consumer.errors import BadRecord

__all__ = ["GROUP_COLUMN_PREFIX", "Projected", "payload_hash", "project"]

# Recompute adds one boolean column per group rule, named with this prefix (recompute.py).
GROUP_COLUMN_PREFIX = "__group_"

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


@dataclass(frozen=True, slots=True)
class Projected:
    """What is sent for one entity, where to, and the hash that dedup compares."""

    tenant: str
    external_id: str
    record: dict[str, Any]
    hash: str


def _as_string(value: Any) -> str:
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


def _as_decimal_cents(value: Any) -> float:
    # A JSON number; exact for every amount below 2**53 cents, which is what Reach parses anyway.
    return float(Decimal(_as_integer(value)) / 100)


def _as_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"not a boolean: {type(value).__name__}")


def _as_datetime(value: Any) -> str:
    """ISO-8601 in UTC with a Z. A timestamp without zone is taken as UTC (document it)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
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
    if isinstance(value, datetime | date):
        return _as_datetime(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


_FORMATTERS: dict[str, Callable[[Any], Any]] = {
    "raw": _as_raw,
    "string": _as_string,
    "integer": _as_integer,
    "decimal_cents": _as_decimal_cents,
    "boolean": _as_boolean,
    "datetime": _as_datetime,
    "date": _as_date,
}


def _hash_pii(value: Any) -> str:
    return hashlib.sha256(str(value).strip().lower().encode()).hexdigest()


def _field_value(name: str, mapping: FieldMapping, row: Mapping[str, Any]) -> Any:
    value = row.get(mapping.column)
    if value is None:
        return None
    try:
        formatted = _FORMATTERS[mapping.format](value)
    except (ValueError, ArithmeticError) as exc:
        # The reason names the field and the format, never the value (it may be PII).
        raise BadRecord(
            f"field {name!r} (column {mapping.column!r}) as {mapping.format}: {exc}"
        ) from exc
    return _hash_pii(formatted) if mapping.pii == "hash" else formatted


def payload_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of a record."""
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def project(resource: Resource, row: Mapping[str, Any]) -> Projected:
    """The full record for one recomputed row; BadRecord when a value cannot be formatted."""
    missing = [c for c in (resource.key, resource.tenant) if row.get(c) is None]
    if missing:
        raise BadRecord(f"the query returned no value for {', '.join(missing)}")
    record = {name: _field_value(name, m, row) for name, m in resource.mapping.items()}
    if resource.groups is not None:
        record[resource.groups.field] = sorted(
            rule.name for rule in resource.groups.rules if row.get(GROUP_COLUMN_PREFIX + rule.name)
        )
    return Projected(
        tenant=_as_string(row[resource.tenant]),
        external_id=_as_string(row[resource.key]),
        record=record,
        hash=payload_hash(record),
    )
