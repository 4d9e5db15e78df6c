"""Audit records: what a send or a delete records, what it never records, and the writer's
promise that a flush returns only once the broker has every record."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml

from consumer.config import FieldMapping, Resource
from consumer.config_file import load_definition
from consumer.errors import DefinitionError, Retryable
from consumer.records.audit import (
    PARTITIONER,
    AuditRecord,
    AuditWriter,
    announced_records,
    audit_key,
    audit_message,
    audit_partition,
    audit_records,
    audited_fields,
    decode_audit,
    delete_record,
    deleting_record,
    destination_host,
    encode_audit,
    sending_record,
    upsert_record,
)
from consumer.records.audit_read import (
    OUTCOME_UNKNOWN,
    AuditEntry,
    Query,
    describe_cause,
    entry_json,
    fold_sends,
    history_lines,
)
from consumer.records.dlq_read import Position
from consumer.router.dirty import MAX_CAUSES, Cause, dirty_message_key
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.projection import GROUP_COLUMN_PREFIX, Projected, project
from tests.shop_definition import EXAMPLE, OFFLINE_ENV, shop_definition
from tests.unit.test_dirty import load_schema, schema_problems

SCHEMA = load_schema("audit-record.schema.json")
DEFINITION = shop_definition()
CUSTOMERS = DEFINITION.resources["customers"]
TRANSACTIONS = DEFINITION.resources["transactions"]
DESTINATION = "127.0.0.1:8080"  # tests/shop_definition.py
AT_MS = 1_795_400_000_123
CDC = Cause(
    kind="cdc",
    table="public.transactions",
    op="u",
    topic="shop.public.transactions",
    partition=3,
    offset=1234,
    source_ts_ms=1_795_399_999_870,
    lsn=22_655_104,
)
ROW_CAUSE = Cause(kind="cdc", table="public.customers", op="c", topic="shop.public.customers")
# Values the audit must never hold, in any form.
SECRETS = {
    "email": "Ada.Lovelace@Example.com",
    "first_name": "Augusta",
    "last_name": "Byron-King",
    "phone": "+44 20 7946 0958",
    "internal_notes": "unmapped-column-value",
}


def _customer_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 42,
        "tenant": "merchant-1",
        **SECRETS,
        "marketing_opt_in": True,
        "lifetime_value_cents": 123456,
        "completed_orders": 4,
        "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        GROUP_COLUMN_PREFIX + "high_value": True,
        GROUP_COLUMN_PREFIX + "repeat_buyer": True,
    }
    row.update(overrides)
    return row


def _customer(**overrides: Any) -> Projected:
    return project(CUSTOMERS, _customer_row(**overrides))


def _forms(value: str) -> set[str]:
    """A value as it could leak: itself, and the SHA-256 that pii: hash would send."""
    return {value, hashlib.sha256(value.strip().lower().encode()).hexdigest()}


# --- what a record holds -------------------------------------------------------------------------


def test_an_upsert_names_every_field_sent_and_keeps_only_non_pii_values() -> None:
    projected = _customer()
    record = upsert_record(
        "customers", CUSTOMERS, DESTINATION, Sent(projected, AT_MS, causes=[ROW_CAUSE, CDC])
    )
    assert record.fields == tuple(sorted([*CUSTOMERS.mapping, "segments"]))
    assert record.values == {
        "completedOrders": 4,
        "createdAt": "2026-01-02T03:04:05.000Z",
        "customerId": "42",
        "lifetimeValue": 1234.56,
        "marketingOptIn": True,
        "segments": ["high_value", "repeat_buyer"],
    }
    assert record.payload_sha256 == projected.hash
    assert (record.kind, record.outcome, record.mode, record.batch_id) == (
        "upsert",
        "accepted",
        "realtime",
        None,
    )
    assert (record.tenant, record.resource, record.reach_schema, record.id) == (
        "merchant-1",
        "customers",
        "shop_customers",
        "42",
    )
    assert record.causes == (ROW_CAUSE, CDC)
    assert (record.at_ms, record.destination) == (AT_MS, DESTINATION)


def test_a_batch_send_has_its_batch_id_and_a_parked_record_says_so() -> None:
    accepted = Sent(_customer(), AT_MS, causes=[CDC], batch_id="b-17", parked=True)
    record = upsert_record("customers", CUSTOMERS, DESTINATION, accepted)
    assert (record.mode, record.batch_id, record.outcome) == ("batch", "b-17", "parked")


def test_causes_are_kept_in_order_up_to_the_windows_bound() -> None:
    causes = [Cause(kind="cdc", offset=i) for i in range(MAX_CAUSES + 3)]
    record = upsert_record("customers", CUSTOMERS, DESTINATION, Sent(_customer(), 1, causes=causes))
    assert [c.offset for c in record.causes] == list(range(MAX_CAUSES))


def test_no_pii_and_nothing_unmapped_is_ever_in_the_encoded_record() -> None:
    projected = _customer()
    # Even a key that somehow got into the record without being mapped is neither named nor kept.
    tampered = Projected(
        projected.tenant,
        projected.external_id,
        {**projected.record, "ssn": "078-05-1120"},
        projected.hash,
    )
    for item in (projected, tampered):
        record = upsert_record("customers", CUSTOMERS, DESTINATION, Sent(item, AT_MS, causes=[CDC]))
        raw = encode_audit(record)
        for value in [*SECRETS.values(), "078-05-1120"]:
            for form in _forms(value):
                assert form.encode() not in raw, value
        assert b"ssn" not in raw
        assert set(record.values) <= {
            n for n, f in CUSTOMERS.mapping.items() if f.pii == "none"
        } | {"segments"}
        assert {"email", "firstName", "lastName", "phone"} <= set(record.fields)


def test_a_hashed_pii_field_is_named_but_its_hash_is_not_kept() -> None:
    mapping = {
        "customerId": FieldMapping(column="id", format="string"),
        "email": FieldMapping(column="email", pii="hash"),
        "phone": FieldMapping(column="phone", pii="send"),
    }
    resource = CUSTOMERS.model_copy(update={"mapping": mapping, "groups": None})
    projected = project(resource, _customer_row())
    assert projected.record["email"] == hashlib.sha256(b"ada.lovelace@example.com").hexdigest()
    record = upsert_record("customers", resource, DESTINATION, Sent(projected, AT_MS, causes=[CDC]))
    assert record.fields == ("customerId", "email", "phone")
    assert record.values == {"customerId": "42"}
    raw = encode_audit(record)
    assert projected.record["email"].encode() not in raw
    assert all(form.encode() not in raw for form in _forms(SECRETS["phone"]))
    assert audited_fields(resource).values == frozenset({"customerId"})


def test_audit_values_false_keeps_names_and_hash_only() -> None:
    resource = CUSTOMERS.model_copy(update={"audit_values": False})
    projected = project(resource, _customer_row())
    record = upsert_record("customers", resource, DESTINATION, Sent(projected, AT_MS, causes=[CDC]))
    assert record.values == {}
    assert record.fields == tuple(sorted([*CUSTOMERS.mapping, "segments"]))
    assert record.payload_sha256 == projected.hash
    assert b"1234.56" not in encode_audit(record)


def test_a_delete_records_no_payload() -> None:
    deleted = Removed("merchant-2", "42", AT_MS, "del-9", causes=[CDC])
    record = delete_record("customers", CUSTOMERS, DESTINATION, deleted)
    assert (record.kind, record.outcome, record.mode, record.batch_id) == (
        "delete",
        "deleted",
        "batch",
        "del-9",
    )
    assert (record.payload_sha256, record.fields, record.values) == (None, (), {})
    assert (record.tenant, record.id, record.causes) == ("merchant-2", "42", (CDC,))


def test_one_resources_delivery_becomes_upserts_then_deletes() -> None:
    records = audit_records(
        "customers",
        CUSTOMERS,
        DESTINATION,
        accepted=[Sent(_customer(id=1), 1, causes=[CDC]), Sent(_customer(id=2), 2, causes=[CDC])],
        deleted=[Removed("merchant-1", "3", 3, "del-1", causes=[CDC])],
    )
    assert [(r.kind, r.id) for r in records] == [("upsert", "1"), ("upsert", "2"), ("delete", "3")]


def test_a_sending_record_holds_what_the_outcome_record_will_without_a_batch_id() -> None:
    """Written ahead of the request: the same entity, payload hash, fields, values, causes and
    path as the record of its outcome; no batch id (Reach has not given one yet)."""
    projected = _customer()
    leaving = Sending(projected, AT_MS - 5, in_batch=True, causes=[ROW_CAUSE, CDC])
    ahead = sending_record("customers", CUSTOMERS, DESTINATION, leaving)
    after = upsert_record(
        "customers", CUSTOMERS, DESTINATION, Sent(projected, AT_MS, "b-1", causes=[ROW_CAUSE, CDC])
    )
    assert (ahead.outcome, ahead.batch_id, ahead.at_ms, ahead.mode) == (
        "sending",
        None,
        AT_MS - 5,
        "batch",
    )
    assert msgspec.structs.replace(ahead, outcome="accepted", batch_id="b-1", at_ms=AT_MS) == after
    single = sending_record("customers", CUSTOMERS, DESTINATION, Sending(projected, AT_MS))
    assert (single.mode, single.batch_id) == ("realtime", None)

    deleting = deleting_record(
        "customers", CUSTOMERS, DESTINATION, Deleting("merchant-2", "42", AT_MS, causes=[CDC])
    )
    deleted = delete_record(
        "customers", CUSTOMERS, DESTINATION, Removed("merchant-2", "42", AT_MS, "d-1", causes=[CDC])
    )
    assert msgspec.structs.replace(deleting, outcome="deleted", batch_id="d-1") == deleted
    assert (deleting.outcome, deleting.batch_id, deleting.mode) == ("sending", None, "batch")

    both = announced_records(
        "customers",
        CUSTOMERS,
        DESTINATION,
        sending=[leaving],
        deleting=[Deleting("merchant-1", "3", AT_MS)],
    )
    assert [(r.kind, r.id, r.outcome) for r in both] == [
        ("upsert", "42", "sending"),
        ("delete", "3", "sending"),
    ]
    # Nothing a send's record may not hold is in its sending record either.
    encoded = encode_audit(ahead).decode()
    assert not any(form in encoded for value in SECRETS.values() for form in _forms(value))


@pytest.mark.parametrize(
    ("base_url", "host"),
    [
        ("https://api.embedreach.com", "api.embedreach.com"),
        ("https://user:secret@api.example.com:8443/v1?token=x#frag", "api.example.com:8443"),
        ("http://127.0.0.1:39123", "127.0.0.1:39123"),
        ("http://[::1]:8080/", "[::1]:8080"),
    ],
)
def test_the_destination_is_the_host_without_credentials_or_path(base_url: str, host: str) -> None:
    assert destination_host(base_url) == host


# --- encoding, schema, key -----------------------------------------------------------------------


def _examples() -> list[AuditRecord]:
    return [
        upsert_record("customers", CUSTOMERS, DESTINATION, Sent(_customer(), AT_MS, causes=[CDC])),
        upsert_record(
            "customers",
            CUSTOMERS,
            DESTINATION,
            Sent(_customer(phone=None), AT_MS, "b-1", causes=[ROW_CAUSE] * 8, parked=True),
        ),
        upsert_record(
            "transactions",
            TRANSACTIONS,
            "127.0.0.1:8080",
            Sent(
                project(
                    TRANSACTIONS,
                    {"id": "tx-1", "tenant": "m", "customer_id": 4, "status": "completed"},
                ),
                0,
                "b-2",
                causes=[Cause(kind="replay", topic="dlq", partition=0, offset=5)],
            ),
        ),
        delete_record(
            "customers", CUSTOMERS, DESTINATION, Removed("m", "42", AT_MS, "d-1", causes=[])
        ),
        sending_record(
            "customers", CUSTOMERS, DESTINATION, Sending(_customer(), AT_MS, causes=[CDC])
        ),
        sending_record(
            "customers",
            CUSTOMERS,
            DESTINATION,
            Sending(_customer(), AT_MS, in_batch=True, causes=[CDC]),
        ),
        deleting_record("customers", CUSTOMERS, DESTINATION, Deleting("m", "42", AT_MS)),
    ]


@pytest.mark.parametrize(
    "record",
    _examples(),
    ids=[
        "upsert",
        "parked",
        "batch",
        "delete",
        "sending-single",
        "sending-batch",
        "sending-delete",
    ],
)
def test_encoded_records_follow_the_schema_and_round_trip(record: AuditRecord) -> None:
    raw = encode_audit(record)
    assert schema_problems(json.loads(raw), SCHEMA) == []
    # Numbers come back as the exact decimals they were written as.
    values = json.loads(orjson.dumps(record.values), parse_float=Decimal)
    assert decode_audit(raw) == msgspec.structs.replace(record, values=values)


def test_exact_numbers_are_audited_and_read_back_as_their_digits() -> None:
    pi = "3.14159265358979323846"
    resource = CUSTOMERS.model_copy(
        update={
            "mapping": {
                **CUSTOMERS.mapping,
                "exact": FieldMapping(column="exact", format="decimal"),
                "big": FieldMapping(column="big", format="decimal"),
            }
        }
    )
    projected = project(resource, _customer_row(exact=Decimal(pi), big=2**70))
    record = upsert_record("customers", resource, DESTINATION, Sent(projected, AT_MS))
    raw = encode_audit(record)
    assert f'"exact":{pi}'.encode() in raw and b'"big":1180591620717411303424' in raw
    decoded = decode_audit(raw)
    assert decoded.values["exact"] == Decimal(pi)
    entry = AuditEntry(Position("audit", 0, 7), decoded)
    printed = orjson.dumps(entry_json(entry))  # what `audit why --json` prints
    assert f'"exact":{pi}'.encode() in printed and b'"big":1180591620717411303424' in printed


def test_every_field_is_encoded_with_explicit_nulls() -> None:
    encoded = json.loads(encode_audit(_examples()[0]))
    assert set(encoded) == set(SCHEMA["required"]) == set(SCHEMA["properties"])
    assert encoded["version"] == 1
    assert encoded["batch_id"] is None


def test_the_schema_rejects_inconsistent_or_extra_content() -> None:
    upsert = json.loads(encode_audit(_examples()[0]))
    delete = json.loads(encode_audit(_examples()[3]))
    assert schema_problems({**upsert, "email": "x"}, SCHEMA) == ["$: email is not allowed"]
    assert schema_problems({**upsert, "outcome": "deleted"}, SCHEMA)
    assert schema_problems({**upsert, "payload_sha256": None}, SCHEMA)
    assert schema_problems({**upsert, "payload_sha256": "abc"}, SCHEMA)
    assert schema_problems({**upsert, "mode": "batch"}, SCHEMA)  # a batch without its id
    assert schema_problems({**upsert, "batch_id": "b-1"}, SCHEMA)  # a single write with one
    assert schema_problems({**upsert, "causes": [upsert["causes"][0]] * 9}, SCHEMA)
    assert schema_problems({**upsert, "causes": [{"kind": "cdc", "row": {}}]}, SCHEMA)
    assert schema_problems({**upsert, "version": 2}, SCHEMA)
    assert schema_problems({**delete, "payload_sha256": "a" * 64}, SCHEMA)
    assert schema_problems({**delete, "fields": ["email"]}, SCHEMA)
    sending = json.loads(encode_audit(_examples()[5]))
    assert schema_problems({**sending, "batch_id": "b-1"}, SCHEMA)  # not given before the answer
    assert schema_problems({**sending, "outcome": "deleted"}, SCHEMA)
    assert schema_problems({**sending, "payload_sha256": None}, SCHEMA)
    deleting = json.loads(encode_audit(_examples()[6]))
    assert schema_problems({**deleting, "mode": "realtime"}, SCHEMA)
    assert schema_problems({**deleting, "outcome": "parked"}, SCHEMA)
    assert schema_problems({k: v for k, v in upsert.items() if k != "causes"}, SCHEMA) == [
        "$: causes is required"
    ]


def test_the_message_is_keyed_like_the_dirty_topic_and_stamped_with_at_ms() -> None:
    record = _examples()[0]
    key, value, headers, timestamp = audit_message(record)
    assert (
        key == b"customers/42" == dirty_message_key("customers", 42) == audit_key("customers", "42")
    )
    assert value == encode_audit(record)
    assert headers == [("reach-sync-audit-version", b"1"), ("reach-sync-audit-kind", b"upsert")]
    assert timestamp == AT_MS


def test_the_partition_is_librdkafkas_consistent_hash() -> None:
    # CRC-32 (IEEE, as zlib) of the key, modulo the partition count; checked against the real
    # producer in tests/integration/test_audit.py.
    assert audit_partition(b"customers/42", 8) == zlib.crc32(b"customers/42") % 8
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    assert PARTITIONER == "consistent_random"


# --- the definition ------------------------------------------------------------------------------


def _topics(tmp_path: Path, **topics: Any) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["topics"] = topics
    path = tmp_path / "definition.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("dirty", "audit"),
    [("acme.dirty", "acme.audit"), ("acme-work", "acme-work.audit"), ("dirty", "dirty.audit")],
)
def test_the_audit_topic_defaults_from_the_dirty_topic(
    tmp_path: Path, dirty: str, audit: str
) -> None:
    path = _topics(tmp_path, dirty=dirty, dead_letter="dl")
    assert load_definition(path, OFFLINE_ENV).topics.audit == audit


def test_the_audit_topic_is_set_in_the_example_and_must_be_its_own(tmp_path: Path) -> None:
    assert DEFINITION.topics.audit == "reach-sync.shop.audit"
    assert shop_definition(REACH_SYNC_AUDIT_TOPIC="x.audit").topics.audit == "x.audit"
    with pytest.raises(DefinitionError) as caught:
        load_definition(_topics(tmp_path, dirty="a", dead_letter="b", audit="a"), OFFLINE_ENV)
    assert caught.value.problems == [
        "topics: audit must be a topic of its own, not the dirty or dead-letter topic"
    ]
    with pytest.raises(DefinitionError) as caught:
        load_definition(_topics(tmp_path, dirty="a", dead_letter="b", audit="a b"), OFFLINE_ENV)
    assert caught.value.problems[0].startswith("topics.audit: String should match pattern")


def test_audit_values_is_on_unless_a_resource_turns_it_off() -> None:
    assert all(r.audit_values for r in DEFINITION.resources.values())
    data = CUSTOMERS.model_dump()
    data["audit_values"] = "sometimes"
    with pytest.raises(ValueError, match="audit_values"):
        Resource.model_validate(data)


# --- the writer ----------------------------------------------------------------------------------


class FakeProducer:
    """librdkafka's produce/poll/flush contract: callbacks fire from poll or flush; ``fail``
    decides which deliveries the broker refuses, ``hold`` leaves them in flight."""

    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []
        self._waiting: list[tuple[bytes, Callable[[Any, Any], None]]] = []
        self.fail: Callable[[bytes], bool] = lambda key: False
        self.hold = False

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})
        self._waiting.append((kwargs["key"], kwargs["on_delivery"]))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        if self.hold:
            return len(self._waiting)
        waiting, self._waiting = self._waiting, []
        for key, callback in waiting:
            callback(_Refused() if self.fail(key) else None, None)
        return 0


class _Refused:
    def str(self) -> str:
        return "Broker: Not enough in-sync replicas"


def _writer() -> tuple[AuditWriter, FakeProducer]:
    producer = FakeProducer()
    return AuditWriter(DEFINITION, producer=producer), producer  # type: ignore[arg-type]


def test_the_writer_announces_keyed_stamped_sending_records_like_the_outcomes() -> None:
    writer, producer = _writer()
    count = writer.announce(
        "customers",
        sending=[Sending(_customer(), AT_MS, in_batch=True, causes=[CDC])],
        deleting=[Deleting("merchant-1", "9", AT_MS, causes=[CDC])],
    )
    assert count == 2
    writer.flush()
    assert [p["key"] for p in producer.produced] == [b"customers/42", b"customers/9"]
    assert [p["timestamp"] for p in producer.produced] == [AT_MS, AT_MS]
    records = [decode_audit(p["value"]) for p in producer.produced]
    assert [(r.kind, r.outcome, r.mode, r.batch_id) for r in records] == [
        ("upsert", "sending", "batch", None),
        ("delete", "sending", "batch", None),
    ]
    assert [dict(p["headers"])["reach-sync-audit-kind"] for p in producer.produced] == [
        b"upsert",
        b"delete",
    ]
    assert writer.acknowledged == 2


def test_the_writer_produces_keyed_stamped_records_to_the_audit_topic() -> None:
    writer, producer = _writer()
    count = writer.record(
        "customers",
        accepted=[Sent(_customer(), AT_MS, causes=[CDC])],
        deleted=[Removed("merchant-1", "9", AT_MS + 1, "d-1", causes=[CDC])],
    )
    assert count == 2
    writer.flush()
    assert [p["key"] for p in producer.produced] == [b"customers/42", b"customers/9"]
    assert {p["topic"] for p in producer.produced} == {"reach-sync.shop.audit"}
    assert [p["timestamp"] for p in producer.produced] == [AT_MS, AT_MS + 1]
    first = decode_audit(producer.produced[0]["value"])
    assert first.destination == DESTINATION
    assert writer.acknowledged == 2


def test_flush_raises_until_the_broker_has_every_record_and_loses_none() -> None:
    writer, producer = _writer()
    producer.fail = lambda key: key == b"customers/7"
    writer.record("customers", accepted=[Sent(_customer(id=i), i, causes=[CDC]) for i in (6, 7, 8)])
    with pytest.raises(Retryable, match="did not acknowledge 1 record: Broker: Not enough"):
        writer.flush()
    assert writer.pending == 1
    producer.fail = lambda key: False
    writer.flush()  # the refused record goes again
    assert [p["key"] for p in producer.produced] == [
        b"customers/6",
        b"customers/7",
        b"customers/8",
        b"customers/7",
    ]
    assert (writer.pending, writer.acknowledged) == (0, 3)


def test_flush_raises_while_records_are_still_in_flight() -> None:
    writer, producer = _writer()
    producer.hold = True
    writer.record("customers", accepted=[Sent(_customer(), AT_MS, causes=[CDC])])
    with pytest.raises(Retryable, match="1 still in flight"):
        writer.flush(0.01)
    producer.hold = False
    writer.flush()
    assert writer.acknowledged == 1


def test_a_full_queue_keeps_the_record_for_the_next_flush() -> None:
    writer, producer = _writer()
    real_produce = producer.produce
    calls = 0

    def full_once(topic: str, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BufferError("Local: Queue full")
        real_produce(topic, **kwargs)

    producer.produce = full_once  # type: ignore[method-assign]
    writer.record("customers", accepted=[Sent(_customer(), AT_MS, causes=[CDC])])
    assert writer.pending == 1
    writer.flush()
    assert (writer.pending, writer.acknowledged) == (0, 1)


# --- showing -------------------------------------------------------------------------------------


def test_a_cause_reads_table_op_position_lsn_and_source_time() -> None:
    assert describe_cause(CDC) == (
        "cdc public.transactions u @ shop.public.transactions[3]/1234, lsn 22655104, "
        "source ts 2026-11-23 02:13:19.870Z"
    )
    assert describe_cause(Cause(kind="resync")) == "resync"


def test_a_backfill_cause_names_its_run_as_the_backfill_printed_it() -> None:
    assert (
        describe_cause(Cause(kind="backfill", run="6e6a8cfef288")) == "backfill, run 6e6a8cfef288"
    )


def test_history_lines_show_time_kind_outcome_hash_tenant_batch_fields_and_causes() -> None:
    projected = _customer()
    record = upsert_record(
        "customers", CUSTOMERS, DESTINATION, Sent(projected, AT_MS, "b-3", causes=[CDC])
    )
    lines = history_lines([AuditEntry(Position("t", 0, 5), record)])
    assert lines == [
        f"2026-11-23 02:13:20.123Z  upsert  accepted  hash {projected.hash[:12]}  "
        "tenant merchant-1  batch b-3",
        "    fields: completedOrders, createdAt, customerId, email, firstName, lastName, "
        "lifetimeValue, marketingOptIn, phone, segments",
        f"    cause:  {describe_cause(CDC)}",
    ]
    delete = delete_record(
        "customers", CUSTOMERS, DESTINATION, Removed("m", "42", 0, "d-1", causes=[])
    )
    assert history_lines([AuditEntry(Position("t", 0, 6), delete)]) == [
        "1970-01-01 00:00:00.000Z  delete  deleted   hash -             tenant m  batch d-1",
        "    cause:  (none recorded)",
    ]


def _entry(record: AuditRecord, offset: int) -> AuditEntry:
    return AuditEntry(Position("t", 0, offset), record)


def _ahead(projected: Projected, at_ms: int, in_batch: bool = True) -> AuditRecord:
    return sending_record(
        "customers", CUSTOMERS, DESTINATION, Sending(projected, at_ms, in_batch, causes=[CDC])
    )


def _answered(projected: Projected, at_ms: int, batch_id: str | None = "b-1") -> AuditRecord:
    return upsert_record(
        "customers", CUSTOMERS, DESTINATION, Sent(projected, at_ms, batch_id, causes=[CDC])
    )


def test_a_sending_record_and_its_outcome_are_one_send_announced_when_it_left() -> None:
    state = _customer()
    folded = fold_sends([_entry(_ahead(state, 100), 0), _entry(_answered(state, 130), 1)])
    assert [(e.record.outcome, e.record.at_ms, e.announced_ms, e.at.offset) for e in folded] == [
        ("accepted", 130, 100, 1)
    ]
    assert not folded[0].outcome_unknown


def test_a_sending_record_no_outcome_followed_is_a_send_whose_outcome_is_unknown() -> None:
    """The process ended after the request left: a state Reach may hold, shown as left with its
    outcome unknown; the next owner's send of the same state has its own pair."""
    s1, s2 = _customer(completed_orders=1), _customer(completed_orders=2)
    folded = fold_sends(
        [
            _entry(_ahead(s1, 100), 0),
            _entry(_answered(s1, 110), 1),
            _entry(_ahead(s2, 200), 2),  # the process ended here
            _entry(_ahead(s2, 300), 3),  # the next owner sends the same state again
            _entry(_answered(s2, 320, "b-2"), 4),
            _entry(_ahead(s1, 400, in_batch=False), 5),  # and ended before a later answer
        ]
    )
    assert [(e.record.outcome, e.record.at_ms, e.announced_ms) for e in folded] == [
        ("sending", 400, 400),
        ("accepted", 320, 300),  # the send answered is the one announced last before it
        ("sending", 200, 200),
        ("accepted", 110, 100),
    ]
    assert [e.outcome_unknown for e in folded] == [True, False, True, False]


def test_sends_are_paired_by_tenant_schema_kind_and_payload_in_time_order() -> None:
    state = _customer()
    moved = _customer(tenant="merchant-2")
    deleted = delete_record(
        "customers", CUSTOMERS, DESTINATION, Removed("merchant-1", "42", 150, "d-1", causes=[])
    )
    deleting = deleting_record(
        "customers", CUSTOMERS, DESTINATION, Deleting("merchant-1", "42", 90)
    )
    unconfirmed = upsert_record(
        "customers", CUSTOMERS, DESTINATION, Sent(moved, 160, unconfirmed=True, in_batch=True)
    )
    folded = fold_sends(
        [
            # Produced again by a retried flush: later on the topic, earlier in time.
            _entry(_answered(state, 120), 9),
            _entry(_ahead(state, 100), 0),
            _entry(_ahead(moved, 95), 1),
            _entry(deleting, 2),
            _entry(deleted, 3),
            _entry(unconfirmed, 4),
            _entry(_answered(state, 50, None), 5),  # written before sending records existed
        ]
    )
    assert [(e.record.kind, e.record.outcome, e.record.tenant, e.announced_ms) for e in folded] == [
        ("upsert", "unconfirmed", "merchant-2", 95),
        ("delete", "deleted", "merchant-1", 90),
        ("upsert", "accepted", "merchant-1", 100),
        ("upsert", "accepted", "merchant-1", None),
    ]


def test_history_lines_say_when_a_send_was_announced_or_that_its_outcome_is_unknown() -> None:
    state = _customer()
    entries = fold_sends(
        [
            _entry(_ahead(state, AT_MS - 20), 0),
            _entry(_answered(state, AT_MS), 1),
            _entry(_ahead(state, AT_MS + 1000), 2),
        ]
    )
    lines = history_lines(entries)
    digest = state.hash[:12]
    assert lines[:2] == [
        f"2026-11-23 02:13:21.123Z  upsert  sending   hash {digest}  tenant merchant-1  batch",
        f"    {OUTCOME_UNKNOWN}",
    ]
    assert OUTCOME_UNKNOWN.startswith("left, outcome unknown (the process ended before the answer")
    announced = lines.index(
        f"2026-11-23 02:13:20.123Z  upsert  accepted  hash {digest}  tenant merchant-1  batch b-1"
    )
    assert lines[announced + 1] == (
        "    announced: 2026-11-23 02:13:20.103Z, before the request left"
    )
    assert [entry_json(e)["announced_at_ms"] for e in entries] == [AT_MS + 1000, AT_MS - 20]
    assert [entry_json(e)["outcome"] for e in entries] == ["sending", "accepted"]


def test_a_query_matches_its_entity_tenant_and_time() -> None:
    record = _examples()[0]
    assert Query("customers", "42").matches(record)
    assert not Query("customers", "4").matches(record)
    assert not Query("transactions", "42").matches(record)
    assert Query("customers", "42", tenant="merchant-1", since_ms=AT_MS).matches(record)
    assert not Query("customers", "42", tenant="merchant-2").matches(record)
    assert not Query("customers", "42", since_ms=AT_MS + 1).matches(record)
    assert Query("customers", "42", since_ms=AT_MS).describe() == (
        "customers/42 with --since 2026-11-23T02:13:20.123Z"
    )
