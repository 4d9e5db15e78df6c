"""Projection: full state with explicit nulls, formats, groups, PII hashing, a stable hash."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from consumer.config import FieldMapping, Resource
from consumer.config_file import load_definition
from consumer.errors import BadRecord
from consumer.sink.projection import GROUP_COLUMN_PREFIX, payload_hash, project
from tests.shop_definition import EXAMPLE
from tests.shop_definition import OFFLINE_ENV as ENV

CUSTOMERS = load_definition(EXAMPLE, ENV).resources["customers"]


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 42,
        "tenant": "merchant-1",
        "email": "Ada@Example.com",
        "first_name": "Ada",
        "last_name": None,
        "phone": None,
        "marketing_opt_in": True,
        "lifetime_value_cents": 123456,
        "completed_orders": 4,
        "created_at": datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=timezone(timedelta(hours=2))),
        "internal_notes": "never leaves",
        GROUP_COLUMN_PREFIX + "high_value": True,
        GROUP_COLUMN_PREFIX + "repeat_buyer": False,
    }
    row.update(overrides)
    return row


def test_the_record_is_the_full_state_with_explicit_nulls() -> None:
    projected = project(CUSTOMERS, _row())
    assert projected.tenant == "merchant-1"
    assert projected.external_id == "42"
    assert projected.record == {
        "customerId": "42",
        "email": "Ada@Example.com",
        "firstName": "Ada",
        "lastName": None,
        "phone": None,
        "marketingOptIn": True,
        "lifetimeValue": 1234.56,
        "completedOrders": 4,
        "createdAt": "2026-01-02T01:04:05.678Z",
        "segments": ["high_value"],
    }


def test_unmapped_columns_never_leave_and_do_not_change_the_hash() -> None:
    first = project(CUSTOMERS, _row())
    second = project(CUSTOMERS, _row(internal_notes="changed"))
    assert "never leaves" not in repr(first.record)
    assert first.hash == second.hash


def test_the_hash_follows_every_sent_value_and_ignores_key_order() -> None:
    assert project(CUSTOMERS, _row()).hash != project(CUSTOMERS, _row(phone="+1")).hash
    assert payload_hash({"a": 1, "b": 2}) == payload_hash({"b": 2, "a": 1})


def _resource(**mapping: FieldMapping) -> Resource:
    return CUSTOMERS.model_copy(update={"mapping": mapping, "groups": None})


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("string", 7, "7"),
        ("integer", Decimal("12"), 12),
        ("integer", "-3", -3),
        ("decimal_cents", 1999, 19.99),
        ("decimal_cents", 0, 0.0),
        ("boolean", "t", True),
        ("boolean", 0, False),
        ("datetime", datetime(2026, 5, 1, 12, 0), "2026-05-01T12:00:00.000Z"),
        ("datetime", date(2026, 5, 1), "2026-05-01T00:00:00.000Z"),
        ("datetime", "2026-05-01T12:00:00+02:00", "2026-05-01T10:00:00.000Z"),
        ("date", datetime(2026, 5, 1, 23, 0, tzinfo=UTC), "2026-05-01"),
        ("raw", Decimal("1.5"), 1.5),
        ("raw", "as is", "as is"),
    ],
)
def test_formats(fmt: str, value: Any, expected: Any) -> None:
    resource = _resource(v=FieldMapping(column="v", format=fmt))  # type: ignore[arg-type]
    assert project(resource, {"id": 1, "tenant": "t", "v": value}).record == {"v": expected}


@pytest.mark.parametrize(
    ("fmt", "value"), [("integer", "abc"), ("boolean", "maybe"), ("integer", True), ("datetime", 5)]
)
def test_a_value_that_cannot_be_formatted_is_a_bad_record_without_the_value(
    fmt: str, value: Any
) -> None:
    resource = _resource(secret=FieldMapping(column="v", format=fmt))  # type: ignore[arg-type]
    with pytest.raises(BadRecord) as caught:
        project(resource, {"id": 1, "tenant": "t", "v": value})
    assert "'secret'" in str(caught.value)
    assert str(value) not in str(caught.value)


def test_pii_hash_sends_the_sha256_of_the_normalised_value() -> None:
    resource = _resource(email=FieldMapping(column="email", pii="hash"))
    record = project(resource, {"id": 1, "tenant": "t", "email": " Ada@Example.com "}).record
    assert record["email"] == hashlib.sha256(b"ada@example.com").hexdigest()


def test_missing_key_or_tenant_is_a_bad_record() -> None:
    with pytest.raises(BadRecord, match="tenant"):
        project(CUSTOMERS, _row(tenant=None))


# --- values no format can send: their entity's BadRecord, naming the field, never the value ----


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    ("fmt", "value", "why"),
    [
        # JSON has no NaN nor infinity (orjson would send null, deleting the field in Reach).
        ("raw", Decimal("NaN"), "not a finite number"),
        ("raw", Decimal("-Infinity"), "not a finite number"),
        ("raw", float("inf"), "not a finite number"),
        ("raw", Decimal("1e400"), "not a finite number"),  # beyond a float
        ("raw", [Decimal("1"), Decimal("NaN")], "not a finite number"),  # numeric[]
        ("string", Decimal("NaN"), "not a finite number"),
        ("integer", Decimal("Infinity"), "not a finite number"),
        ("decimal_cents", Decimal("NaN"), "not a finite number"),
        pytest.param("decimal_cents", 10**400, "not a finite number", id="cents-beyond-float"),
        # bytea that is no UTF-8 text
        ("string", b"caf\xe9", "bytes that are not UTF-8 text"),
        ("raw", b"\xff", "bytes that are not UTF-8 text"),
        # what JSON cannot carry at all (an interval)
        ("raw", timedelta(days=1), "not JSON serializable"),
        # what the format rejects
        ("date", "not-a-date", "Invalid isoformat string"),
        ("datetime", "2026-13-45", "month must be in 1..12"),
        # and anything unexpected
        ("string", _Unprintable(), "no text"),
    ],
)
def test_a_value_no_format_can_send_is_a_bad_record_naming_the_field(
    fmt: str, value: Any, why: str
) -> None:
    resource = _resource(secret=FieldMapping(column="v", format=fmt, pii="send"))  # type: ignore[arg-type]
    with pytest.raises(BadRecord) as caught:
        project(resource, {"id": 1, "tenant": "t", "v": value})
    reason = str(caught.value)
    assert "'secret'" in reason and "'v'" in reason, reason
    assert why in reason, reason
    if not isinstance(value, _Unprintable):
        assert repr(value) not in reason and repr(str(value)) not in reason, reason


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("string", b"caf\xc3\xa9", "café"),  # bytea holding UTF-8 text
        ("raw", b"caf\xc3\xa9", "café"),
        ("raw", [Decimal("1.5"), None, {"a": Decimal("2")}], [1.5, None, {"a": 2.0}]),
        ("string", Decimal("1e400"), "1E+400"),  # finite, only beyond a float
    ],
)
def test_values_json_can_carry_once_formatted(fmt: str, value: Any, expected: Any) -> None:
    resource = _resource(v=FieldMapping(column="v", format=fmt))  # type: ignore[arg-type]
    assert project(resource, {"id": 1, "tenant": "t", "v": value}).record == {"v": expected}


def test_a_tenant_that_is_no_text_is_a_bad_record() -> None:
    with pytest.raises(BadRecord, match="column 'tenant': bytes that are not UTF-8"):
        project(CUSTOMERS, _row(tenant=b"\xff"))
