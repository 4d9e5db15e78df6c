"""Projection: full state with explicit nulls, formats, groups, PII hashing, a stable hash."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from consumer.config import Auth, Destination, FieldMapping, Resource
from consumer.config_file import load_definition
from consumer.errors import BadRecord
from consumer.reach.client import ReachClient
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
        "createdAt": "2026-01-02T01:04:05.678900Z",  # microseconds: it has some below the ms
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
        ("raw", Decimal("1e400"), "a number beyond a double's range"),
        ("raw", [Decimal("1"), Decimal("NaN")], "not a finite number"),  # numeric[]
        ("string", Decimal("NaN"), "not a finite number"),
        ("integer", Decimal("Infinity"), "not a finite number"),
        ("decimal_cents", Decimal("NaN"), "not a finite number"),
        pytest.param("decimal_cents", 10**400, "beyond a double's range", id="cents-beyond-float"),
        ("decimal", Decimal("NaN"), "not a finite number"),
        ("decimal", Decimal("-Infinity"), "not a finite number"),
        ("decimal", float("nan"), "not a finite number"),
        ("decimal", Decimal("1e400"), "a number beyond a double's range"),
        ("decimal", "1e400", "a number beyond a double's range"),
        ("decimal", "-1e-20000", "a number with more than 16383 decimals"),
        ("decimal", "NaN", "text that is not a decimal number"),
        ("decimal", "12,5", "text that is not a decimal number"),
        ("decimal", "\u0661\u0662", "text that is not a decimal number"),  # Arabic-Indic digits
        ("decimal", True, "a boolean is not a number"),
        ("decimal", date(2026, 1, 1), "not a number: date"),
        ("raw", 10**400, "a number beyond a double's range"),  # an integer from jsonb
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
    if not isinstance(value, _Unprintable):  # not quoted (the ``inf`` of infinite is no quote)
        for text in (repr(value), repr(str(value))):
            assert not re.search(rf"(?<!\w){re.escape(text)}(?!\w)", reason), reason


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


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), Decimal("-Infinity")])
@pytest.mark.parametrize("fmt", ["raw", "string", "decimal", "integer", "datetime"])
def test_a_non_finite_number_is_named_as_such_and_the_reason_is_whole(fmt: str, value: Any) -> None:
    resource = _resource(secret=FieldMapping(column="v", format=fmt))  # type: ignore[arg-type]
    with pytest.raises(BadRecord) as caught:
        project(resource, {"id": 1, "tenant": "t", "v": value})
    assert str(caught.value) == (
        f"field 'secret' (column 'v') as {fmt}: not a finite number (NaN or infinite)"
    )


def test_a_tenant_that_is_no_text_is_a_bad_record() -> None:
    with pytest.raises(BadRecord, match="column 'tenant': bytes that are not UTF-8"):
        project(CUSTOMERS, _row(tenant=b"\xff"))


# --- exact numbers and times: the bytes that are sent ---------------------------------------------

PI = Decimal("3.14159265358979323846")


@pytest.mark.parametrize(
    ("fmt", "value", "sent"),
    [
        # decimal: the database's own digits and scale, never in exponent form
        ("decimal", PI, b"3.14159265358979323846"),
        ("decimal", Decimal("1.50"), b"1.50"),
        ("decimal", Decimal("-0.5"), b"-0.5"),
        ("decimal", Decimal("1E-7"), b"0.0000001"),  # psycopg's Decimal of numeric 0.0000001
        ("decimal", Decimal("0E-8"), b"0.00000000"),
        ("decimal", Decimal("1E+20"), b"100000000000000000000"),
        (
            "decimal",
            Decimal("123456789012345678901234567890.5"),
            b"123456789012345678901234567890.5",
        ),
        ("decimal", 42, b"42"),
        ("decimal", 2**70, b"1180591620717411303424"),
        ("decimal", " -1.5e3 ", b"-1500"),
        ("decimal", "12.340", b"12.340"),
        ("decimal", 0.1, b"0.1"),  # a float (double precision) is a float already
        # raw: a decimal's float where its text is the value (as always sent), its digits where not
        ("raw", PI, b"3.14159265358979323846"),
        ("raw", Decimal("1.50"), b"1.5"),
        ("raw", Decimal("12.00"), b"12.0"),
        ("raw", Decimal("1E-7"), b"1e-7"),
        ("raw", Decimal("12345678901234567.5"), b"12345678901234567.5"),
        ("raw", [Decimal("1.5"), PI], b"[1.5,3.14159265358979323846]"),  # numeric[]
        ("raw", 2**70, b"1180591620717411303424"),  # an integer of jsonb, beyond 64 bits
        # decimal_cents: as always below 10**15 cents, exact beyond (the float is a cent off)
        ("decimal_cents", 1999, b"19.99"),
        ("decimal_cents", 123400, b"1234.0"),
        ("decimal_cents", 7687380876099307, b"76873808760993.07"),
        # datetime: milliseconds, microseconds when there are any below the millisecond
        ("datetime", datetime(2026, 5, 1, 12, 0, 0, 123456), b'"2026-05-01T12:00:00.123456Z"'),
        ("datetime", datetime(2026, 5, 1, 12, 0, 0, 123000), b'"2026-05-01T12:00:00.123Z"'),
        ("datetime", datetime(2026, 5, 1, 12, 0, 0, 1), b'"2026-05-01T12:00:00.000001Z"'),
        ("datetime", datetime(2026, 5, 1, 12, 0), b'"2026-05-01T12:00:00.000Z"'),
        (
            "datetime",
            datetime(2026, 5, 1, 0, 30, 0, 250, tzinfo=timezone(timedelta(hours=2))),
            b'"2026-04-30T22:30:00.000250Z"',
        ),
        ("datetime", "2026-05-01T12:00:00.5+02:00", b'"2026-05-01T10:00:00.500Z"'),
        ("datetime", "2026-05-01 12:00:00.123456", b'"2026-05-01T12:00:00.123456Z"'),
        ("raw", datetime(2026, 5, 1, 12, 0, 0, 999999), b'"2026-05-01T12:00:00.999999Z"'),
    ],
)
def test_the_bytes_sent(fmt: str, value: Any, sent: bytes) -> None:
    resource = _resource(v=FieldMapping(column="v", format=fmt))  # type: ignore[arg-type]
    projected = project(resource, {"id": 1, "tenant": "t", "v": value})
    body = b'{"v":' + sent + b"}"
    assert orjson.dumps(projected.record) == body
    assert projected.hash == hashlib.sha256(body).hexdigest()


def test_the_hash_of_exact_numbers_is_over_their_digits_with_sorted_keys() -> None:
    resource = _resource(
        b=FieldMapping(column="v", format="decimal"), a=FieldMapping(column="v", format="raw")
    )
    projected = project(resource, {"id": 1, "tenant": "t", "v": PI})
    canonical = b'{"a":3.14159265358979323846,"b":3.14159265358979323846}'
    assert projected.hash == payload_hash(projected.record) == hashlib.sha256(canonical).hexdigest()


def test_a_hashed_decimal_is_the_sha256_of_its_digits() -> None:
    resource = _resource(v=FieldMapping(column="v", format="decimal", pii="hash"))
    record = project(resource, {"id": 1, "tenant": "t", "v": Decimal("1E-7")}).record
    assert record["v"] == hashlib.sha256(b"0.0000001").hexdigest()


def test_datetimes_that_never_had_sub_millisecond_digits_keep_their_hash() -> None:
    """What was sent before microseconds were: a value without any below the millisecond
    hashes as it did then (its record is not re-sent), one with some does not (it is, once)."""
    resource = _resource(v=FieldMapping(column="v", format="datetime"))

    def hashed(moment: datetime) -> str:
        return project(resource, {"id": 1, "tenant": "t", "v": moment}).hash

    def as_before(text: str) -> str:
        return hashlib.sha256(orjson.dumps({"v": text})).hexdigest()

    assert hashed(datetime(2026, 5, 1, 12, 0, 0, 123000)) == as_before("2026-05-01T12:00:00.123Z")
    assert hashed(datetime(2026, 5, 1, 12, 0, 0, 123456)) != as_before("2026-05-01T12:00:00.123Z")


async def test_the_reach_client_sends_exact_numbers_byte_for_byte() -> None:
    bodies: list[bytes] = []

    def reach(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if request.url.path.endswith("/batch"):
            data = {"batchId": "b1", "recordCount": 1, "message": "queued"}
            return httpx.Response(202, json={"success": True, "message": "ok", "data": data})
        return httpx.Response(201, json={"success": True, "message": "ok"})

    resource = _resource(total=FieldMapping(column="v", format="decimal"))
    record = project(resource, {"id": 1, "tenant": "t", "v": PI}).record
    destination = Destination(
        base_url="http://127.0.0.1:9",  # never dialled: the mock transport answers
        auth=Auth(mode="jwt", partner_id="p", secret=SecretStr("s" * 32), token_ttl_s=3600),
    )
    async with ReachClient(destination, transport=httpx.MockTransport(reach)) as client:
        await client.upsert_one("t", "schema", record)
        await client.upsert_batch("t", "schema", {"1": record})
    assert len(bodies) == 2
    assert bodies[0] == b'{"data":{"total":3.14159265358979323846}}'
    assert b'{"total":3.14159265358979323846}' in bodies[1]
