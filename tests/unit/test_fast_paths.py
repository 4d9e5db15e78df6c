"""The syncer's fast paths give exactly what the plain code gives: the compiled projector against
each format's general path (values, types, errors), Window.add and latencies_ms against their
plain versions, and the audit's copies and cached field lists against what they replace."""

from __future__ import annotations

import dataclasses
import gc
import random
import weakref
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from consumer.config import FieldMapping, Resource
from consumer.errors import BadRecord
from consumer.records.audit import audit_records, audited_fields
from consumer.router.dirty import MAX_CAUSES, Cause, DirtyKey
from consumer.sink.outcomes import Removed, Sent
from consumer.sink.projection import (
    GROUP_COLUMN_PREFIX,
    Projected,
    _field_value,
    _hash_of,
    _identity,
    project,
    projector,
)
from consumer.syncer.window_sink import _with_causes
from consumer.syncer.windows import CAUSE_BYTES, ENTITY_BYTES, Window
from tests.shop_definition import shop_definition

CUSTOMERS = shop_definition().resources["customers"]
FORMATS = ("raw", "string", "integer", "decimal", "decimal_cents", "boolean", "datetime", "date")
LONDON = ZoneInfo("Europe/London")


class _Text(str):
    pass


class _Number(int):
    pass


EDGES: list[Any] = [
    True,
    False,
    0,
    1,
    -1,
    7,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**15 - 1,
    10**15,
    -(10**15) + 1,
    -(10**15),
    123456,
    10**5000,
    _Number(5),
    0.0,
    -0.0,
    1.5,
    0.1,
    1e300,
    float("nan"),
    float("inf"),
    float("-inf"),
    Decimal("123456"),
    Decimal("-0"),
    Decimal("1E+3"),
    Decimal("1.5"),
    Decimal("1.50"),
    Decimal("12345678901234567"),
    Decimal("1e400"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    "abc",
    "",
    " 12 ",
    "-3",
    "true",
    "N",
    "1.25",
    "2026-01-02T03:04:05+02:00",
    "2026-01-02",
    _Text("sub"),
    b"bytes",
    b"\xff",
    bytearray(b"ba"),
    memoryview(b"mv"),
    [1, Decimal("0.1"), {"a": float("nan")}],
    {"k": [datetime(2026, 1, 1)]},
    date(2026, 1, 2),
    datetime(2026, 1, 2, 3, 4, 5),
    datetime(2026, 1, 2, 3, 4, 5, 123000),
    datetime(2026, 1, 2, 3, 4, 5, 123456),
    datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, 1000, tzinfo=ZoneInfo("Etc/UTC")),
    datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=timezone(timedelta(hours=2))),
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(seconds=30))),
    datetime(2026, 1, 2, 3, 4, 5, 5, tzinfo=LONDON),  # winter: offset 0
    datetime(2026, 7, 2, 3, 4, 5, 5, tzinfo=LONDON),  # summer: +01:00
    datetime(2026, 10, 25, 1, 30, fold=1, tzinfo=LONDON),
    datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC
    datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))),  # after 9999
    datetime(999, 1, 1, 0, 0, 0, 1000),
    object(),
]


def _outcome(call: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What a call gives, comparable: its JSON and type, or its error and message."""
    try:
        value = call(*args)
    except BadRecord as exc:
        return "error", str(exc)
    if isinstance(value, Projected):
        return "projected", (value.tenant, value.external_id, _json(value.record), value.hash)
    return "value", (type(value), _json(value))


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=lambda v: f"<{type(v).__name__}>")


def _plain_project(resource: Resource, row: Mapping[str, Any]) -> Projected:
    """project as it was written before its compiled version."""
    missing = [c for c in (resource.key, resource.tenant) if row.get(c) is None]
    if missing:
        raise BadRecord(f"the query returned no value for {', '.join(missing)}")
    record = {name: _field_value(name, m, row) for name, m in resource.mapping.items()}
    if resource.groups is not None:
        record[resource.groups.field] = sorted(
            rule.name for rule in resource.groups.rules if row.get(GROUP_COLUMN_PREFIX + rule.name)
        )
    return Projected(
        tenant=_identity(resource.tenant, row),
        external_id=_identity(resource.key, row),
        record=record,
        hash=_hash_of(resource.mapping, record),
    )


def _one_field(fmt: str, pii: str = "none") -> Resource:
    mapping = {"v": FieldMapping(column="value", format=fmt, pii=pii)}  # type: ignore[arg-type]
    return CUSTOMERS.model_copy(update={"mapping": mapping, "groups": None})


@pytest.mark.parametrize("pii", ["none", "send", "hash"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_formats_fast_path_gives_what_the_general_path_gives(fmt: str, pii: str) -> None:
    resource = _one_field(fmt, pii)
    mapping = resource.mapping["v"]
    for value in EDGES:
        row = {"id": 1, "tenant": "t", "value": value}
        fast = _outcome(projector(resource), row)
        general = _outcome(_plain_project, resource, row)
        assert fast == general, (fmt, pii, value)
        fast = _outcome(lambda r: projector(resource)(r).record["v"], row)
        if fast[0] == "value":
            assert fast == _outcome(_field_value, "v", mapping, row)


def test_cents_as_a_division_are_the_exact_decimals_float() -> None:
    mapping = _one_field("decimal_cents").mapping["v"]
    resource = _one_field("decimal_cents")
    rng = random.Random(5)
    bounds = [10**15 - k for k in range(50)] + [2**53 + k for k in range(-50, 50)]
    values = bounds + [rng.randrange(-(10**15), 10**15) for _ in range(20_000)]
    values += [rng.randrange(-(10**6), 10**6) for _ in range(20_000)]
    for cents in values:
        for value in (cents, -cents, Decimal(cents)):
            row = {"id": 1, "tenant": "t", "value": value}
            fast = projector(resource)(row).record["v"]
            general = _field_value("v", mapping, row)
            assert (type(fast), orjson.dumps(fast)) == (type(general), orjson.dumps(general))


@pytest.mark.parametrize(
    "value",
    [7, "7", 10**5000, True, 1.5, Decimal("2"), b"k", float("nan")],
    ids=lambda value: type(value).__name__,
)
def test_keys_and_tenants_are_the_text_the_general_path_gives(value: Any) -> None:
    row = {"id": value, "tenant": value, **{c: None for c in ("email", "created_at")}}
    assert _outcome(project, CUSTOMERS, row) == _outcome(_plain_project, CUSTOMERS, row)


def test_the_first_bad_field_in_mapping_order_is_the_one_named() -> None:
    row = {"id": 1, "tenant": "t", "marketing_opt_in": "maybe", "completed_orders": "x"}
    with pytest.raises(BadRecord, match="marketingOptIn"):
        project(CUSTOMERS, row)
    with pytest.raises(BadRecord, match="no value for id, tenant"):
        project(CUSTOMERS, {"email": "a"})


def test_realistic_rows_project_as_they_did() -> None:
    rng = random.Random(3)
    transactions = shop_definition().resources["transactions"]
    for i in range(2_000):
        zone = rng.choice([UTC, ZoneInfo("Etc/UTC"), LONDON, None])
        created = datetime(2025, 1, 1, tzinfo=zone) + timedelta(
            seconds=rng.randrange(3 * 10**7),
            microseconds=rng.choice([0, 1000, rng.randrange(10**6)]),
        )
        row = {
            "id": i,
            "tenant": f"m-{i % 3}",
            "email": f"u{i}@x",
            "first_name": rng.choice([None, "Ada"]),
            "marketing_opt_in": rng.choice([True, False]),
            "lifetime_value_cents": Decimal(rng.randrange(10**7)),
            "completed_orders": rng.randrange(9),
            "created_at": created,
            "customer_id": rng.randrange(100),
            "status": "completed",
            "amount_cents": rng.randrange(10**7),
            "currency": "USD",
            GROUP_COLUMN_PREFIX + "high_value": rng.choice([True, False, None]),
            GROUP_COLUMN_PREFIX + "repeat_buyer": rng.choice([True, False]),
        }
        for resource in (CUSTOMERS, transactions):
            assert _outcome(project, resource, row) == _outcome(_plain_project, resource, row)


def test_groups_are_sorted_members_whatever_the_rules_order() -> None:
    groups = CUSTOMERS.groups
    assert groups is not None
    reversed_rules = groups.model_copy(update={"rules": tuple(reversed(groups.rules))})
    resource = CUSTOMERS.model_copy(update={"groups": reversed_rules})
    row = {
        "id": 1,
        "tenant": "t",
        GROUP_COLUMN_PREFIX + "high_value": 1,
        GROUP_COLUMN_PREFIX + "repeat_buyer": True,
    }
    assert project(resource, row).record["segments"] == ["high_value", "repeat_buyer"]
    assert project(CUSTOMERS, row).record["segments"] == ["high_value", "repeat_buyer"]


def test_a_projector_is_made_once_per_resource_object() -> None:
    assert projector(CUSTOMERS) is projector(CUSTOMERS)
    copy = CUSTOMERS.model_copy(update={"groups": None})
    assert projector(copy) is not projector(CUSTOMERS)
    assert "segments" not in project(copy, {"id": 1, "tenant": "t"}).record
    assert "resource" not in projector(copy).__code__.co_freevars
    gone = weakref.ref(copy)
    del copy
    gc.collect()
    assert gone() is None  # the cache does not keep a resource alive


# --- windows -------------------------------------------------------------------------------------


def _plain_add(window: Window, key: DirtyKey, offset: int, window_s: float) -> None:
    """Window.add as it was written before its fast version."""
    entity = (key.resource, str(key.id))
    if entity not in window.ids:
        window.ids[entity] = key.id
        window.size += ENTITY_BYTES
    window.offsets.setdefault(entity, offset)
    window.resources.add(key.resource)
    causes = window.causes[entity]
    if len(causes) < MAX_CAUSES:
        kept = key.causes()[: MAX_CAUSES - len(causes)]
        causes.extend(kept)
        window.size += CAUSE_BYTES * len(kept)
    window.end_offset = max(window.end_offset, offset)
    window.received += key.triggers
    window.due_after_s = min(window.due_after_s, window_s)
    if key.enqueued_ms and (
        not window.first_enqueued_ms or key.enqueued_ms < window.first_enqueued_ms
    ):
        window.first_enqueued_ms = key.enqueued_ms


def _plain_latencies(window: Window, now_ms: int) -> tuple[list[int], list[int]]:
    latencies: list[int] = []
    own: list[int] = []
    for entity, causes in window.causes.items():
        if entity in window.held:
            continue
        changes = [c for c in causes if c.source_ts_ms and c.op != "r"]
        if changes:
            latencies.append(max(0, now_ms - min(c.source_ts_ms or 0 for c in changes)))
            appended = [c.appended_ms for c in changes if c.appended_ms]
            if appended:
                own.append(max(0, now_ms - min(appended)))
    return latencies, own


def _random_cause(rng: random.Random) -> Cause:
    return Cause(
        kind="cdc",
        op=rng.choice(["c", "u", "d", "r", None]),
        source_ts_ms=rng.choice([None, 0, rng.randrange(1, 10**6)]),
        appended_ms=rng.choice([None, 0, rng.randrange(1, 10**6)]),
        offset=rng.randrange(100),
    )


def _state(window: Window) -> tuple[Any, ...]:
    return (
        window.end_offset,
        window.received,
        window.size,
        window.ids,
        dict(window.causes),
        window.resources,
        window.offsets,
        window.first_enqueued_ms,
        window.due_after_s,
    )


def test_window_add_and_latencies_match_their_plain_versions() -> None:
    rng = random.Random(11)
    for _ in range(30):
        fast = Window(opened_at=0.0, due_after_s=5.0)
        plain = Window(opened_at=0.0, due_after_s=5.0)
        for offset in range(rng.randrange(1, 400)):
            later = tuple(_random_cause(rng) for _ in range(rng.choice([0, 0, 1, 3, 9])))
            number = rng.randrange(20)
            key = DirtyKey(
                resource=rng.choice(["customers", "transactions"]),
                id=number if rng.random() < 0.5 else str(number),
                cause=_random_cause(rng),
                enqueued_ms=rng.choice([0, rng.randrange(1, 10**6)]),
                triggers=1 + len(later),
                later_causes=later,
            )
            window_s = rng.choice([0.1, 0.5, 2.0])
            offset_seen = offset if rng.random() < 0.9 else rng.randrange(offset + 1)
            fast.add(key, offset_seen, window_s)
            _plain_add(plain, key, offset_seen, window_s)
        assert _state(fast) == _state(plain)
        for entity in rng.sample(sorted(fast.ids), k=min(3, len(fast.ids))):
            fast.hold(entity[0], [entity[1]], "t")
            plain.hold(entity[0], [entity[1]], "t")
        now = rng.randrange(10**6)
        assert fast.latencies_ms(now) == _plain_latencies(plain, now)
    assert isinstance(fast.causes, defaultdict)


# --- audit ---------------------------------------------------------------------------------------


def test_audited_sends_copy_every_field_but_the_causes() -> None:
    projected = project(CUSTOMERS, {"id": 3, "tenant": "t"})
    sent = Sent(projected, 5, "b-1", parked=True, unconfirmed=True, in_batch=True, causes=())
    cause = Cause(kind="cdc", offset=1)
    causes = {("customers", "3"): [cause]}
    (copied,) = _with_causes(causes, "customers", [sent])
    assert copied == dataclasses.replace(sent, causes=[cause])
    # A field added to Sent must be copied by _with_causes too.
    assert [f.name for f in dataclasses.fields(Sent)] == [
        "projected",
        "at_ms",
        "batch_id",
        "parked",
        "unconfirmed",
        "in_batch",
        "causes",
    ]
    assert _with_causes({}, "customers", [sent])[0].causes == []


def test_audited_names_and_values_follow_each_records_own_keys() -> None:
    allowed = audited_fields(CUSTOMERS)
    full = project(CUSTOMERS, {"id": 3, "tenant": "t", "email": "a@b", "completed_orders": 2})
    odd = dataclasses.replace(full, record={"zeta": 1, "email": "x", "completedOrders": 9})
    records = audit_records(
        "customers",
        CUSTOMERS,
        "h",
        [Sent(full, 1), Sent(odd, 2), Sent(full, 3)],
        [Removed("t", "4", 5, None)],
    )
    for record, projected in zip(records, [full, odd, full], strict=False):
        source = projected.record
        assert record.fields == tuple(sorted(k for k in source if k in allowed.names))
        assert record.values == {k: v for k, v in sorted(source.items()) if k in allowed.values}
        assert list(record.values) == sorted(record.values)
    assert records[-1].kind == "delete"
