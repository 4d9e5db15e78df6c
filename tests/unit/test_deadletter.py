"""Dead letters: an event keeps its original bytes; a record follows its schema, bounded."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from consumer.errors import BadRecord
from consumer.records.deadletter import (
    HEADER_KIND,
    MAX_BODY_BYTES,
    DeadLetterEvent,
    Headers,
    dead_letter_message,
    dead_letter_record,
    error_class,
)
from consumer.router.debezium import DecodeError
from consumer.router.dirty import Cause
from tests.unit.test_dirty import load_schema, schema_problems

SCHEMA = load_schema("dead-letter.schema.json")
CAUSE = Cause(kind="cdc", table="public.customers", op="u", topic="shop.public.customers")
PAYLOAD = {"customerId": "7", "marketingOptIn": True}
PAYLOAD_SHA256 = hashlib.sha256(json.dumps(PAYLOAD, sort_keys=True).encode()).hexdigest()


def _event(**changes: Any) -> Message:
    fields: dict[str, Any] = {
        "topic": "shop.public.customers",
        "partition": 2,
        "offset": 41,
        "key": b'{"id":7}',
        "value": b"\x00not json",
        "headers": [("traceparent", b"00-abc-def-01"), ("empty", None)],
        "timestamp": (TIMESTAMP_CREATE_TIME, 1_795_387_787_004),
    }
    fields.update(changes)
    return Message(**fields)


def _headers(headers: Headers) -> dict[str, str | bytes | None]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in headers}


def test_an_event_keeps_its_bytes_and_headers_and_says_where_and_why() -> None:
    letter = DeadLetterEvent.from_message(_event(), DecodeError("the value is not JSON"))
    key, value, headers = dead_letter_message(letter)
    assert (key, value) == (b'{"id":7}', b"\x00not json")
    assert headers[:2] == [("traceparent", b"00-abc-def-01"), ("empty", None)]
    assert _headers(headers[2:]) == {
        "reach-sync-dlq-kind": "event",
        "reach-sync-dlq-reason": "the value is not JSON",
        "reach-sync-dlq-error-class": "consumer.router.debezium.DecodeError",
        "reach-sync-dlq-stage": "router",
        "reach-sync-dlq-topic": "shop.public.customers",
        "reach-sync-dlq-partition": "2",
        "reach-sync-dlq-offset": "41",
        "reach-sync-dlq-timestamp": "1795387787004",
    }


def test_an_event_without_key_value_headers_or_timestamp_stays_that_way() -> None:
    message = _event(
        key=None, value=None, headers=None, timestamp=(TIMESTAMP_NOT_AVAILABLE, -1), offset=0
    )
    key, value, headers = dead_letter_message(
        DeadLetterEvent.from_message(message, DecodeError("no key"))
    )
    assert (key, value) == (None, None)
    names = [k for k, _ in headers]
    assert names[0] == HEADER_KIND and "reach-sync-dlq-timestamp" not in names
    assert _headers(headers)["reach-sync-dlq-offset"] == "0"


def test_a_long_reason_is_bounded() -> None:
    letter = DeadLetterEvent.from_message(_event(), DecodeError("é" * 2000))
    reason = _headers(letter.headers())["reach-sync-dlq-reason"]
    assert isinstance(reason, str) and set(reason) == {"é"}
    assert 1000 < len(reason.encode()) <= 1024


def test_a_record_follows_the_schema_with_reach_s_answer() -> None:
    rejected = BadRecord("Reach rejected the record", status=422, body='{"error":"email"}')
    record = dead_letter_record(
        resource="customers",
        entity_id=7,
        tenant="merchant-1",
        cause=CAUSE,
        error=rejected,
        attempts=2,
        first_attempt_ms=1_000,
        last_attempt_ms=2_000,
        payload_sha256=PAYLOAD_SHA256,
    )
    key, value, headers = dead_letter_message(record)
    assert key == b"customers/7"
    assert value is not None
    document = json.loads(value)
    assert schema_problems(document, SCHEMA) == []
    assert document["payload"] is None and document["payload_sha256"] == PAYLOAD_SHA256
    assert (document["http_status"], document["body"], document["body_truncated"]) == (
        422,
        '{"error":"email"}',
        False,
    )
    assert document["error_class"] == "consumer.errors.BadRecord"
    assert document["cause"] == {
        "kind": "cdc",
        "table": "public.customers",
        "op": "u",
        "topic": "shop.public.customers",
    }
    assert _headers(headers) == {
        "reach-sync-dlq-kind": "record",
        "reach-sync-dlq-reason": "Reach rejected the record",
        "reach-sync-dlq-error-class": "consumer.errors.BadRecord",
        "reach-sync-dlq-stage": "syncer",
    }


def test_a_record_body_is_cut_to_2_kb_on_a_character_boundary() -> None:
    record = dead_letter_record(
        resource="customers",
        entity_id="c-7",
        tenant=None,
        cause=CAUSE,
        error=BadRecord("invalid", status=400, body="ü" * 3000),
        attempts=1,
        first_attempt_ms=1,
        last_attempt_ms=1,
        payload=PAYLOAD,
    )
    assert record.body is not None and record.body_truncated
    assert len(record.body.encode()) <= MAX_BODY_BYTES and set(record.body) == {"ü"}
    document = json.loads(dead_letter_message(record).value or b"")
    assert schema_problems(document, SCHEMA) == []
    assert document["payload"] == PAYLOAD


def test_a_record_without_an_http_answer_has_null_status_and_body() -> None:
    record = dead_letter_record(
        resource="transactions",
        entity_id=3,
        tenant="merchant-1",
        cause=CAUSE,
        error=ValueError("amount is not a number"),
        attempts=1,
        first_attempt_ms=5,
        last_attempt_ms=5,
        payload_sha256=PAYLOAD_SHA256,
    )
    document = json.loads(dead_letter_message(record).value or b"")
    assert schema_problems(document, SCHEMA) == []
    assert (document["http_status"], document["body"]) == (None, None)
    assert document["error_class"] == "builtins.ValueError"


def test_a_row_that_could_not_be_projected_has_neither_payload_nor_hash() -> None:
    record = dead_letter_record(
        resource="customers",
        entity_id=7,
        tenant=None,
        cause=CAUSE,
        error=BadRecord("field 'email' (column 'email') as string: bad"),
        attempts=1,
        first_attempt_ms=1,
        last_attempt_ms=1,
    )
    document = json.loads(dead_letter_message(record).value or b"")
    assert (document["payload"], document["payload_sha256"]) == (None, None)
    assert schema_problems(document, SCHEMA) == []


def test_the_schema_refuses_a_bad_status() -> None:
    record = dead_letter_record(
        resource="customers",
        entity_id=7,
        tenant=None,
        cause=CAUSE,
        error=BadRecord("x", status=400),
        attempts=1,
        first_attempt_ms=1,
        last_attempt_ms=1,
        payload=PAYLOAD,
    )
    document = json.loads(dead_letter_message(record).value or b"")
    assert schema_problems({**document, "http_status": 42}, SCHEMA) == [
        "$.http_status: fails minimum 100"
    ]
    assert schema_problems({**document, "cause": {}}, SCHEMA) == ["$.cause: kind is required"]


def test_error_class_is_qualified() -> None:
    assert error_class(DecodeError("x")) == "consumer.router.debezium.DecodeError"


def test_a_payloads_exact_numbers_keep_their_digits() -> None:
    record = dead_letter_record(
        resource="transactions",
        entity_id=3,
        tenant="merchant-1",
        cause=CAUSE,
        error=BadRecord("invalid", status=400),
        attempts=1,
        first_attempt_ms=5,
        last_attempt_ms=5,
        payload={"total": orjson.Fragment(b"3.14159265358979323846")},
    )
    value = dead_letter_message(record).value or b""
    assert b'"payload":{"total":3.14159265358979323846}' in value
    assert schema_problems(json.loads(value), SCHEMA) == []
