"""Input reach-sync must dead-letter: malformed source events, and rows Reach cannot be given.

A change-data pipeline meets bytes it cannot use (a misconfigured converter, a hand-produced
message, a connector bug) and rows that cannot be delivered (a value Reach refuses, one the driver
cannot load). Each must end as a dead letter with its reason, alone, without holding up the input
behind it. The chaos run injects every kind here and checks each one's dead letter.

Only kinds reach-sync really dead-letters are listed, each with a reason it really gives (checked
offline and on real servers by devstack/tests/*/test_chaos_malformed.py); input the router ignores
on purpose (tombstones, heartbeats, transaction metadata, truncate, logical-decoding messages) is
not malformed. ``POISON_KINDS`` (nested too deeply to decode) once stopped the router; they are
listed by name so that their tests stay in sight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import psycopg

__all__ = [
    "POISON_KINDS",
    "BadRow",
    "MalformedEvent",
    "SourceEvent",
    "bad_rows",
    "create_bad_rows",
    "good_event",
    "malformed_events",
    "poison_events",
]

Table = Literal["customers", "transactions"]

# The start of every reason the router gives a value that does not decode as an envelope.
NOT_ENVELOPE = "the value is not a Debezium envelope: "
NOT_A_KEY = "the key is not JSON: "
# Deeper than any recursion limit msgspec decodes within (Python's, 1000 by default).
POISON_DEPTH = 100_000


@dataclass(frozen=True)
class SourceEvent:
    """A well-formed change event on a shop topic, as Kafka Connect's JsonConverter writes it."""

    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class MalformedEvent:
    """A source event the router must dead-letter.

    ``reason`` is a substring of the dead letter's ``reach-sync-dlq-reason`` header. The dead
    letter keeps ``key`` and ``value`` byte for byte, and the key or the value holds the call's
    marker where the failure does not depend on it: each event is found by its exact bytes.
    """

    kind: str
    topic: str
    key: bytes | None
    value: bytes | None
    reason: str


@dataclass(frozen=True)
class BadRow:
    """A row of the shop reach-sync cannot deliver: it must end as a ``record`` dead letter
    keyed ``resource/entity_id``.

    ``statements`` create it in one transaction; the last one returns the entity id.
    ``reason`` is a substring of the record dead letter's ``reach-sync-dlq-reason`` header (the
    same text is the ``reason`` field of its JSON value). ``sandbox_differs``: the entity is
    expected in a sandbox-equals-database comparison yet never reaches the sandbox (Reach
    refuses it); an unloadable row cannot be projected, so such a comparison leaves it out on
    both sides. Either way a comparison should exclude every bad row's entity: the load may
    touch it afterwards (an update re-dead-letters it; a customer_update of its email fixes it).
    """

    kind: str
    resource: str  # "customers" or "transactions"
    statements: tuple[tuple[str, tuple[object, ...]], ...]
    entity_id: str
    reason: str
    sandbox_differs: bool


# --- Kafka Connect's JSON, as Debezium's PostgreSQL connector writes the shop's tables --------

_COLUMNS: dict[Table, tuple[tuple[str, str, bool], ...]] = {
    "customers": (
        ("id", "int64", False),
        ("merchant_id", "int64", False),
        ("email", "string", False),
        ("first_name", "string", True),
        ("last_name", "string", True),
        ("phone", "string", True),
        ("marketing_opt_in", "boolean", False),
        ("internal_notes", "string", True),
        ("created_at", "timestamp", False),
        ("updated_at", "timestamp", False),
    ),
    "transactions": (
        ("id", "int64", False),
        ("merchant_id", "int64", False),
        ("customer_id", "int64", False),
        ("status", "string", False),
        ("amount_cents", "int64", False),
        ("currency", "string", False),
        ("created_at", "timestamp", False),
        ("updated_at", "timestamp", False),
    ),
}
_SOURCE_FIELDS = (
    ("version", "string", False),
    ("connector", "string", False),
    ("name", "string", False),
    ("ts_ms", "int64", False),
    ("snapshot", "string", True),
    ("db", "string", False),
    ("sequence", "string", True),
    ("schema", "string", False),
    ("table", "string", False),
    ("txId", "int64", True),
    ("lsn", "int64", True),
    ("xmin", "int64", True),
)
# The default of an envelope's part: what Debezium would write.
_REAL: Any = object()
_ZONED = {"name": "io.debezium.time.ZonedTimestamp", "version": 1}
_TS_MS = 1_796_000_000_000
_LSN = 40_000_000


def _field(name: str, kind: str, optional: bool) -> dict[str, Any]:
    if kind == "timestamp":
        return {"type": "string", "optional": optional, **_ZONED, "field": name}
    return {"type": kind, "optional": optional, "field": name}


def _value_schema(prefix: str, table: Table) -> dict[str, Any]:
    row = [_field(*column) for column in _COLUMNS[table]]
    image = {"type": "struct", "fields": row, "optional": True}
    name = f"{prefix}.public.{table}"
    return {
        "type": "struct",
        "fields": [
            {**image, "name": f"{name}.Value", "field": "before"},
            {**image, "name": f"{name}.Value", "field": "after"},
            {
                "type": "struct",
                "fields": [_field(*f) for f in _SOURCE_FIELDS],
                "optional": False,
                "name": "io.debezium.connector.postgresql.Source",
                "field": "source",
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
        ],
        "optional": False,
        "name": f"{name}.Envelope",
        "version": 2,
    }


def _key_schema(prefix: str, table: Table) -> dict[str, Any]:
    return {
        "type": "struct",
        "fields": [{"type": "int64", "optional": False, "default": 0, "field": "id"}],
        "optional": False,
        "name": f"{prefix}.public.{table}.Key",
    }


def _json(document: Any) -> bytes:
    """Compact JSON in the document's own key order, as JsonConverter writes it."""
    return msgspec.json.encode(document)


def _splice(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with its one occurrence of ``old`` replaced: raw bytes JSON cannot be built with."""
    if data.count(old) != 1:
        raise ValueError(f"{old!r} occurs {data.count(old)} times, not once")
    return data.replace(old, new)


class _Events:
    """Builds the events of one call: every one carries ``marker`` where its failure does not
    depend on it (the key's id when the value fails first, the source's txId otherwise)."""

    def __init__(self, prefix: str, marker: int) -> None:
        self.prefix = prefix
        self.marker = marker

    def topic(self, table: Table) -> str:
        return f"{self.prefix}.public.{table}"

    def image(self, table: Table, entity_id: int, customer_id: int | None = None) -> dict[str, Any]:
        at = "2026-11-30T12:00:00.000000Z"
        if table == "customers":
            return {
                "id": entity_id,
                "merchant_id": 1,
                "email": f"chaos-{self.marker}@example.com",
                "first_name": "Chaos",
                "last_name": "Monkey",
                "phone": None,
                "marketing_opt_in": False,
                "internal_notes": None,
                "created_at": at,
                "updated_at": at,
            }
        return {
            "id": entity_id,
            "merchant_id": 1,
            "customer_id": entity_id if customer_id is None else customer_id,
            "status": "pending",
            "amount_cents": 1999,
            "currency": "USD",
            "created_at": at,
            "updated_at": at,
        }

    def source(self, table: str, schema: str = "public") -> dict[str, Any]:
        return {
            "version": "3.6.3.Final",
            "connector": "postgresql",
            "name": self.prefix,
            "ts_ms": _TS_MS,
            "snapshot": "false",
            "db": "shop",
            "sequence": None,
            "schema": schema,
            "table": table,
            "txId": self.marker,
            "lsn": _LSN,
            "xmin": None,
        }

    def envelope(
        self,
        table: Table,
        op: str | None = "u",
        *,
        before: Any = None,
        after: Any = _REAL,
        source: Any = _REAL,
    ) -> dict[str, Any]:
        """A change envelope; ``after`` and ``source`` default to the real thing (the marker's
        row, the shop table), and None for ``op`` leaves the field out."""
        document: dict[str, Any] = {
            "before": before,
            "after": self.image(table, self.marker) if after is _REAL else after,
            "source": self.source(table) if source is _REAL else source,
            "op": op,
            "ts_ms": _TS_MS + 100,
        }
        if op is None:
            del document["op"]
        return document

    def value(self, table: Table, envelope: dict[str, Any], with_schema: bool) -> bytes:
        if not with_schema:
            return _json(envelope)
        return _json({"schema": _value_schema(self.prefix, table), "payload": envelope})

    def key(self, table: Table, entity_id: Any, with_schema: bool) -> bytes:
        columns = {"id": entity_id}
        if not with_schema:
            return _json(columns)
        return _json({"schema": _key_schema(self.prefix, table), "payload": columns})

    def own_key(self, table: Table, with_schema: bool = False) -> bytes:
        """A valid key whose id is the marker: for events whose value fails first."""
        return self.key(table, self.marker, with_schema)


def good_event(
    topic_prefix: str,
    table: Table,
    entity_id: int,
    *,
    with_schema: bool,
    customer_id: int | None = None,
    op: Literal["c", "u", "r"] = "u",
) -> SourceEvent:
    """A valid change of one row, built like the malformed events (same schema blocks): it
    makes ``table``/``entity_id`` dirty, and a transaction its customer (``customer_id``,
    default the same id) too."""
    events = _Events(topic_prefix, entity_id)
    envelope = events.envelope(table, op, after=events.image(table, entity_id, customer_id))
    return SourceEvent(
        events.topic(table),
        events.key(table, entity_id, with_schema),
        events.value(table, envelope, with_schema),
    )


# --- the malformed events ---------------------------------------------------------------------


def _value_failures(e: _Events) -> list[MalformedEvent]:
    """The value is not JSON, or not a JSON object: nothing of the event is usable."""
    c: Table = "customers"
    t: Table = "transactions"
    schema_event = e.value(c, e.envelope(c), with_schema=True)
    bare_event = e.value(t, e.envelope(t), with_schema=False)
    malformed = NOT_ENVELOPE + "JSON is malformed: invalid character"
    nan = _splice(e.value(c, e.envelope(c), False), b'"phone":null', b'"phone":NaN')
    infinity = _splice(schema_event, b'"lsn":%d' % _LSN, b'"lsn":Infinity')
    bad_utf8 = _splice(bare_event, b'"table":"transactions"', b'"table":"trans\xff\xfeactions"')
    surrogate = _splice(schema_event, b'"table":"customers"', b'"table":"\\udc00customers"')
    return [
        MalformedEvent("value-not-json", e.topic(c), e.own_key(c), b"not json at all", malformed),
        MalformedEvent(
            "value-truncated",
            e.topic(c),
            e.own_key(c, with_schema=True),
            schema_event[: schema_event.index(b'"op":')],
            NOT_ENVELOPE + "Input data was truncated",
        ),
        MalformedEvent(
            "value-json-array",
            e.topic(t),
            e.own_key(t),
            b"[" + bare_event + b"]",
            NOT_ENVELOPE + "Expected `object`, got `array`",
        ),
        MalformedEvent(
            "value-json-string",
            e.topic(c),
            e.own_key(c),
            _json(e.value(c, e.envelope(c), False).decode()),  # the envelope as a JSON string
            NOT_ENVELOPE + "Expected `object`, got `str`",
        ),
        MalformedEvent(
            "value-json-number",
            e.topic(t),
            e.own_key(t),
            b"42",
            NOT_ENVELOPE + "Expected `object`, got `int`",
        ),
        # The JSON literal, not a tombstone (a Kafka null value, which is ignored on purpose).
        MalformedEvent(
            "value-json-null",
            e.topic(c),
            e.own_key(c),
            b"null",
            NOT_ENVELOPE + "Expected `object`, got `null`",
        ),
        MalformedEvent(
            "value-empty",
            e.topic(t),
            e.own_key(t, with_schema=True),
            b"",
            NOT_ENVELOPE + "Input data was truncated",
        ),
        MalformedEvent(
            "value-utf8-bom",
            e.topic(c),
            e.own_key(c, with_schema=True),
            b"\xef\xbb\xbf" + schema_event,
            malformed,
        ),
        MalformedEvent(
            "value-trailing-garbage",
            e.topic(t),
            e.own_key(t),
            bare_event + b"\n" + bare_event,
            NOT_ENVELOPE + "JSON is malformed: trailing characters",
        ),
        MalformedEvent("value-nan-token", e.topic(c), e.own_key(c), nan, malformed),
        MalformedEvent(
            "value-infinity-token",
            e.topic(c),
            e.own_key(c, with_schema=True),
            infinity,
            malformed,
        ),
        MalformedEvent(
            "value-invalid-utf8",
            e.topic(t),
            e.own_key(t),
            bad_utf8,
            NOT_ENVELOPE + "Invalid UTF-8 encoded string",
        ),
        MalformedEvent(
            "value-lone-surrogate",
            e.topic(c),
            e.own_key(c, with_schema=True),
            surrogate,
            NOT_ENVELOPE + "JSON is malformed: invalid utf-16 surrogate pair",
        ),
    ]


def _envelope_failures(e: _Events) -> list[MalformedEvent]:
    """JSON objects that are no usable change envelope: wrong types, missing parts."""
    c: Table = "customers"
    t: Table = "transactions"
    no_source = "the envelope has no source schema and table"
    duplicate_op = _splice(
        e.value(c, e.envelope(c, "c"), False), b'"op":"c"', b'"op":"c","op":"upsert"'
    )
    source_no_table = e.source(c)
    del source_no_table["table"]
    source_ts_text = {**e.source(t), "ts_ms": "2026-11-30T12:00:00Z"}
    return [
        MalformedEvent(
            "op-unknown",
            e.topic(c),
            e.own_key(c),
            e.value(c, e.envelope(c, "x"), False),
            "unknown op 'x'",
        ),
        MalformedEvent(
            "op-uppercase",
            e.topic(t),
            e.own_key(t, with_schema=True),
            e.value(t, e.envelope(t, "U"), True),
            "unknown op 'U'",
        ),
        MalformedEvent(
            "op-not-a-string",
            e.topic(c),
            e.own_key(c),
            _splice(e.value(c, e.envelope(c, "u"), False), b'"op":"u"', b'"op":1'),
            NOT_ENVELOPE + "Expected `str | null`, got `int` - at `$.op`",
        ),
        MalformedEvent(
            "op-missing",
            e.topic(c),
            e.own_key(c, with_schema=True),
            e.value(c, e.envelope(c, None), True),
            "the envelope has no op",
        ),
        # Duplicate names: msgspec keeps the last, as Python's json does.
        MalformedEvent(
            "op-duplicate", e.topic(c), e.own_key(c), duplicate_op, "unknown op 'upsert'"
        ),
        MalformedEvent(
            "source-missing",
            e.topic(t),
            e.own_key(t),
            e.value(t, e.envelope(t, "c", source=None), False),
            no_source,
        ),
        MalformedEvent(
            "source-without-table",
            e.topic(c),
            e.own_key(c, with_schema=True),
            e.value(c, e.envelope(c, "u", source=source_no_table), True),
            no_source,
        ),
        MalformedEvent(
            "source-not-an-object",
            e.topic(c),
            e.own_key(c),
            e.value(c, e.envelope(c, "u", source="public.customers"), False),
            NOT_ENVELOPE + "Expected `object | null`, got `str` - at `$.source`",
        ),
        MalformedEvent(
            "source-ts-not-an-integer",
            e.topic(t),
            e.own_key(t, with_schema=True),
            e.value(t, e.envelope(t, "u", source=source_ts_text), True),
            NOT_ENVELOPE + "Expected `int | null`, got `str` - at `$.payload.source.ts_ms`",
        ),
        MalformedEvent(
            "create-without-after",
            e.topic(c),
            e.own_key(c, with_schema=True),
            e.value(c, e.envelope(c, "c", after=None), True),
            "op 'c' without its after image",
        ),
        MalformedEvent(
            "update-without-after",
            e.topic(t),
            e.own_key(t),
            e.value(t, e.envelope(t, "u", before=e.image(t, e.marker), after=None), False),
            "op 'u' without its after image",
        ),
        MalformedEvent(
            "snapshot-read-without-after",
            e.topic(c),
            e.own_key(c),
            e.value(c, e.envelope(c, "r", after=None), False),
            "op 'r' without its after image",
        ),
        MalformedEvent(
            "delete-without-before",
            e.topic(t),
            e.own_key(t, with_schema=True),
            e.value(t, e.envelope(t, "d", after=None), True),
            "op 'd' without its before image",
        ),
        MalformedEvent(
            "after-not-an-object",
            e.topic(c),
            e.own_key(c),
            e.value(c, e.envelope(c, "c", after=[e.marker, "chaos@example.com"]), False),
            "the after image is not an object",
        ),
        MalformedEvent(
            "before-not-an-object",
            e.topic(t),
            e.own_key(t, with_schema=True),
            e.value(t, e.envelope(t, "d", before="deleted", after=None), True),
            "the before image is not an object",
        ),
        MalformedEvent(
            "schema-payload-not-an-object",
            e.topic(c),
            e.own_key(c, with_schema=True),
            _json({"schema": _value_schema(e.prefix, c), "payload": [e.envelope(c)]}),
            NOT_ENVELOPE + "Expected `object | null`, got `array` - at `$.payload`",
        ),
        MalformedEvent(
            "schema-payload-op-not-a-string",
            e.topic(t),
            e.own_key(t, with_schema=True),
            _splice(e.value(t, e.envelope(t, "c"), True), b'"op":"c"', b'"op":["c"]'),
            NOT_ENVELOPE + "Expected `str | null`, got `array` - at `$.payload.op`",
        ),
    ]


def _key_failures(e: _Events) -> list[MalformedEvent]:
    """A valid envelope whose key gives no usable id (the marker is in the source's txId)."""
    c: Table = "customers"
    t: Table = "transactions"
    customer = e.value(c, e.envelope(c), False)
    customer_with_schema = e.value(c, e.envelope(c), True)
    sale = e.value(t, e.envelope(t), False)
    float_twice = _splice(e.key(c, 7, True), b'"payload":{"id":7}', b'"payload":{"id":7,"id":7.5}')
    return [
        MalformedEvent("key-missing", e.topic(c), None, customer, "the event has no key"),
        MalformedEvent(
            "key-not-json",
            e.topic(c),
            b"id=%d" % e.marker,
            customer_with_schema,
            NOT_A_KEY + "JSON is malformed: invalid character",
        ),
        MalformedEvent(
            "key-not-an-object",
            e.topic(t),
            b"[%d]" % e.marker,
            sale,
            NOT_A_KEY + "Expected `object`, got `array`",
        ),
        MalformedEvent(
            "key-payload-null",
            e.topic(c),
            _json({"schema": _key_schema(e.prefix, c), "payload": None}),
            customer_with_schema,
            "the key's payload is not an object",
        ),
        MalformedEvent(
            "key-id-float",
            e.topic(c),
            e.key(c, 12.5, False),
            customer,
            "column id of public.customers holds a float, not an id",
        ),
        MalformedEvent(
            "key-id-bool",
            e.topic(c),
            e.key(c, True, True),
            customer_with_schema,
            "column id of public.customers holds a bool, not an id",
        ),
        MalformedEvent(
            "key-id-object",
            e.topic(t),
            e.key(t, {"id": 7}, False),
            sale,
            "column id of public.transactions holds a dict, not an id",
        ),
        MalformedEvent(
            "key-id-out-of-range",
            e.topic(c),
            b'{"id":1e400}',
            customer,
            NOT_A_KEY + "Number out of range",
        ),
        # Duplicate names in the key: the last one counts, and it is no id.
        MalformedEvent(
            "key-id-duplicate",
            e.topic(c),
            float_twice,
            customer_with_schema,
            "column id of public.customers holds a float, not an id",
        ),
    ]


def _planning_failures(e: _Events) -> list[MalformedEvent]:
    """Decodable changes that name nothing the definition can plan from."""
    c: Table = "customers"
    t: Table = "transactions"
    sale_fk_float = {**e.image(t, e.marker), "customer_id": 4.25}
    sale_fk_bool = {**e.image(t, e.marker), "customer_id": True}
    return [
        MalformedEvent(
            "fk-not-an-id",
            e.topic(t),
            e.own_key(t),
            e.value(t, e.envelope(t, "c", after=sale_fk_float), False),
            "column customer_id of public.transactions holds a float, not an id",
        ),
        MalformedEvent(
            "fk-before-not-an-id",
            e.topic(t),
            e.own_key(t, with_schema=True),
            e.value(t, e.envelope(t, "d", before=sale_fk_bool, after=None), True),
            "column customer_id of public.transactions holds a bool, not an id",
        ),
        # A table the definition does not know, on a topic the router subscribes to.
        MalformedEvent(
            "unknown-table",
            e.topic(c),
            e.own_key(c),
            e.value(c, e.envelope(c, "c", source=e.source("ghosts")), False),
            "no trigger on table public.ghosts",
        ),
        MalformedEvent(
            "unknown-schema",
            e.topic(t),
            e.own_key(t, with_schema=True),
            e.value(t, e.envelope(t, "c", source=e.source("transactions", "archive")), True),
            "no trigger on table archive.transactions",
        ),
    ]


def malformed_events(topic_prefix: str, marker: int) -> list[MalformedEvent]:
    """One event of every kind the router dead-letters, on the shop's topics
    (``{topic_prefix}.public.customers`` and ``.transactions``); ``marker`` makes this call's
    bytes its own. With and without Connect's schema block, as both exist."""
    e = _Events(topic_prefix, marker)
    return [
        *_value_failures(e),
        *_envelope_failures(e),
        *_key_failures(e),
        *_planning_failures(e),
        *poison_events(topic_prefix, marker),
    ]


# Nested deeper than msgspec follows: it raises RecursionError, not a DecodeError, which once
# escaped the router's loop and stopped it, and a restarted router stopped again on the same
# uncommitted batch (fixed in consumer/router/debezium.py; found by this module's tests).
POISON_KINDS = ("value-deeply-nested", "key-deeply-nested")


def poison_events(topic_prefix: str, marker: int) -> list[MalformedEvent]:
    """The POISON_KINDS, a key and a value nested 100,000 deep."""
    e = _Events(topic_prefix, marker)
    c: Table = "customers"
    nested = b"[" * POISON_DEPTH + b"]" * POISON_DEPTH
    value = _splice(e.value(c, e.envelope(c), False), b'"phone":null', b'"phone":' + nested)
    key = b'{"id":%d,"path":%s}' % (e.marker, nested)
    return [
        MalformedEvent("value-deeply-nested", e.topic(c), e.own_key(c), value, NOT_ENVELOPE),
        MalformedEvent(
            "key-deeply-nested", e.topic(c), key, e.value(c, e.envelope(c), False), NOT_A_KEY
        ),
    ]


# --- bad rows ---------------------------------------------------------------------------------

_MERCHANT = "(SELECT id FROM merchants ORDER BY id LIMIT 1)"
_NEW_CUSTOMER = (
    "INSERT INTO customers (merchant_id, email, first_name, last_name, created_at)"
    f" VALUES ({_MERCHANT}, %s, 'Chaos', %s, %s::timestamptz) RETURNING id"
)
_NEW_SALE = (
    "INSERT INTO transactions (merchant_id, customer_id, status, amount_cents, currency,"
    " created_at) SELECT merchant_id, id, 'completed', 1999, 'USD', %s::timestamptz"
    " FROM customers WHERE email = %s ORDER BY id DESC LIMIT 1 RETURNING id"
)
_NOW = "now"
# Why each unloadable kind fails: psycopg cannot load a timestamp outside Python's years 1 to
# 9999 (consumer/sink/recompute.py dead-letters the entity, naming the field and column).
_TOO_LARGE = "timestamp too large (after year 10K)"
_TOO_SMALL = "timestamp too small (before year 1)"


def _customer(
    kind: str, email: str, created_at: str, marker: int, reason: str, sandbox_differs: bool
) -> BadRow:
    statement = (_NEW_CUSTOMER, (email, f"bad-row-{kind}-{marker}", created_at))
    return BadRow(kind, "customers", (statement,), "", reason, sandbox_differs)


def bad_rows(marker: int) -> list[BadRow]:
    """The bad rows of one call, not yet created (``entity_id`` empty)."""
    sale_owner = f"chaos-sale-owner-{marker}@example.com"
    return [
        # The database takes any text; Reach's shop_customers schema says format: email, and
        # the sandbox answers the record with 400 (or a batch failure) naming the field.
        _customer(
            "customer-email-invalid",
            f"not-an-email-{marker}",
            _NOW,
            marker,
            "must be a valid email",
            sandbox_differs=True,
        ),
        _customer(
            "customer-email-empty", "", _NOW, marker, "must be a valid email", sandbox_differs=True
        ),
        _customer(
            "customer-created-at-infinity",
            f"chaos-infinity-{marker}@example.com",
            "infinity",
            marker,
            f"field 'createdAt' (column 'created_at'): {_TOO_LARGE}",
            sandbox_differs=False,
        ),
        _customer(
            "customer-created-at-minus-infinity",
            f"chaos-minus-infinity-{marker}@example.com",
            "-infinity",
            marker,
            f"field 'createdAt' (column 'created_at'): {_TOO_SMALL}",
            sandbox_differs=False,
        ),
        # The sale alone is unloadable (its customer, created with it, is a good one: its
        # query reads no created_at of transactions).
        BadRow(
            "transaction-created-at-infinity",
            "transactions",
            (
                (_NEW_CUSTOMER, (sale_owner, f"bad-row-sale-owner-{marker}", _NOW)),
                (_NEW_SALE, ("infinity", sale_owner)),
            ),
            "",
            f"field 'transactionDate' (column 'created_at'): {_TOO_LARGE}",
            sandbox_differs=False,
        ),
    ]


def create_bad_rows(dsn: str, marker: int) -> list[BadRow]:
    """Create every bad row (the shop must have a merchant), each in its own transaction;
    return them with their entity ids."""
    created = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for row in bad_rows(marker):
            with conn.transaction():
                returned = None
                for statement, params in row.statements:
                    returned = conn.execute(statement, params).fetchone()
            if returned is None:
                raise RuntimeError(f"bad row {row.kind}: nothing created (no merchant?)")
            created.append(dataclasses.replace(row, entity_id=str(returned[0])))
    return created
