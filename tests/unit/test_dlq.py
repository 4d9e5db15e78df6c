"""Dead letters read back: decoding, filters, the listing, and how a replay plans dirty keys.

Messages are built with records/deadletter.py's own producing code (``dead_letter_message``)
and confluent-kafka's ``Message``, so what is decoded here is byte for byte what the topic holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import BadRecord, Retryable
from consumer.records.deadletter import (
    DeadLetterEvent,
    DeadLetterRecord,
    dead_letter_message,
    dead_letter_record,
)
from consumer.records.dlq_read import (
    Entry,
    Filter,
    Position,
    decode_entry,
    entry_json,
    parse_time,
    table_lines,
)
from consumer.records.dlq_replay import plan_replay
from consumer.router.debezium import DecodeError
from consumer.router.dirty import Cause, DirtyKey, decode_dirty, encode_dirty
from consumer.router.lookups import Found
from consumer.router.triggers import UnknownTable
from tests.membership import write_membership_definition
from tests.shop_definition import OFFLINE_ENV, shop_definition
from tests.unit.test_dirty import SCHEMA as DIRTY_SCHEMA
from tests.unit.test_dirty import schema_problems

DLQ = "shop.dead-letter"
T0 = 1_795_400_000_000  # 2026-11-23T02:13:20Z, in milliseconds
CDC = Cause(kind="cdc", table="public.customers", op="u", topic="shop.public.customers")
SECRET = "jane@example.com"


def _dlq_message(letter: DeadLetterEvent | DeadLetterRecord, offset: int, at_ms: int) -> Message:
    key, value, headers = dead_letter_message(letter)
    return Message(
        topic=DLQ,
        partition=0,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp=(TIMESTAMP_CREATE_TIME, at_ms),
    )


def _record(entity_id: str, tenant: str = "merchant-1", resource: str = "customers") -> Any:
    return dead_letter_record(
        resource=resource,
        entity_id=entity_id,
        tenant=tenant,
        cause=CDC,
        error=BadRecord("Reach refused the record", status=422, body='{"error":"email"}'),
        attempts=1,
        first_attempt_ms=T0,
        last_attempt_ms=T0,
        payload_sha256="a" * 64,
    )


def _source_event(key: bytes | None, value: bytes | None, offset: int = 41) -> Message:
    return Message(
        topic="shop.public.customers",
        partition=2,
        offset=offset,
        key=key,
        value=value,
        headers=[("traceparent", b"00-abc-def-01")],
        timestamp=(TIMESTAMP_CREATE_TIME, T0 - 5_000),
    )


def _envelope(table: str, after: dict[str, Any]) -> bytes:
    source = {"schema": "public", "table": table, "ts_ms": T0, "lsn": 1}
    return orjson.dumps({"before": None, "after": after, "op": "u", "source": source})


def _event(
    value: bytes | None, error: Exception, key: bytes | None = b'{"id":9}', offset: int = 41
) -> DeadLetterEvent:
    return DeadLetterEvent.from_message(_source_event(key, value, offset), error)


def _entries(*letters: DeadLetterEvent | DeadLetterRecord) -> list[Entry]:
    """Dead letters as read back, one second apart, at offsets 0, 1, 2..."""
    return [
        decode_entry(_dlq_message(letter, offset, T0 + 1000 * offset))
        for offset, letter in enumerate(letters)
    ]


# --- decoding -------------------------------------------------------------------------------------


def test_a_record_dead_letter_reads_back_with_its_entity() -> None:
    (entry,) = _entries(_record("7"))
    assert (entry.kind, entry.entity, entry.tenant) == ("record", "customers/7", "merchant-1")
    assert entry.at == Position(DLQ, 0, 0) and entry.timestamp_ms == T0
    assert entry.error_class == "consumer.errors.BadRecord" and entry.stage == "syncer"
    assert entry.record is not None and entry.record.http_status == 422


def test_an_event_dead_letter_reads_back_with_where_it_came_from() -> None:
    (entry,) = _entries(_event(b"{not json", DecodeError("the value is not JSON")))
    assert (entry.kind, entry.stage, entry.entity) == ("event", "router", None)
    assert entry.source == Position("shop.public.customers", 2, 41)
    assert entry.source_timestamp_ms == T0 - 5_000
    assert entry.error_class == "consumer.router.debezium.DecodeError"
    assert entry.reason == "the value is not JSON"
    assert (entry.key, entry.value) == (b'{"id":9}', b"{not json")


def test_a_dirty_key_the_syncer_rejected_names_its_entity() -> None:
    dirty = encode_dirty(DirtyKey("orders", 5, CDC))
    message = Message(topic="shop.dirty", partition=1, offset=3, key=b"orders/5", value=dirty)
    letter = DeadLetterEvent.from_message(message, KeyError("orders"), stage="syncer")
    (entry,) = _entries(letter)
    assert (entry.kind, entry.stage, entry.entity) == ("event", "syncer", "orders/5")


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        (None, b"{}", "not a dead letter: no reach-sync-dlq-kind header"),
        ([("reach-sync-dlq-kind", b"parcel")], b"{}", "not a dead letter: unknown kind 'parcel'"),
        ([("reach-sync-dlq-kind", b"record")], b"{oops", "a record dead letter that does not"),
        ([("reach-sync-dlq-kind", b"record")], b'{"resource": "x"}', "a record dead letter"),
    ],
)
def test_what_does_not_decode_is_listed_as_undecodable(
    headers: list[tuple[str, str | bytes | None]] | None, value: bytes, reason: str
) -> None:
    message = Message(topic=DLQ, partition=0, offset=9, value=value, headers=headers)
    entry = decode_entry(message)
    assert entry.kind == "undecodable" and entry.reason.startswith(reason)
    assert entry.at == Position(DLQ, 0, 9)


def test_the_last_of_our_headers_wins_over_an_event_s_own() -> None:
    """An event that was dead-lettered, replayed by hand and dead-lettered again keeps the old
    headers first; the newest context is what counts."""
    old = _event(b"{not json", DecodeError("first time"))
    key, value, headers = dead_letter_message(old)
    again = Message(topic="shop.public.customers", partition=0, offset=50, key=key, value=value)
    again.set_headers(headers)
    newer = DeadLetterEvent.from_message(again, DecodeError("second time"))
    (entry,) = _entries(newer)
    assert entry.reason == "second time"
    assert entry.source == Position("shop.public.customers", 0, 50)


# --- filters --------------------------------------------------------------------------------------


def _mixed() -> list[Entry]:
    return _entries(
        _record("7"),  # offset 0, T0
        _event(b"{not json", DecodeError("the value is not JSON")),  # 1
        _record("8", tenant="merchant-2"),  # 2
        _record("5", resource="transactions"),  # 3
        _event(_envelope("orders", {"id": 1}), UnknownTable("no trigger on table public.orders")),
        _record("7"),  # 5
    )


def _offsets(entries: list[Entry], chosen: Filter) -> list[int]:
    return [e.at.offset for e in entries if chosen.matches(e)]


@pytest.mark.parametrize(
    ("chosen", "offsets"),
    [
        (Filter(), [0, 1, 2, 3, 4, 5]),
        (Filter(resource="customers"), [0, 2, 5]),
        (Filter(resource="customers", entity_id="7"), [0, 5]),
        (Filter(entity_id="5"), [3]),
        (Filter(tenant="merchant-2"), [2]),
        (Filter(kind="event"), [1, 4]),
        (Filter(kind="undecodable"), []),
        (Filter(error_class="consumer.router.triggers.UnknownTable"), [4]),
        (Filter(error_class="UnknownTable"), [4]),
        (Filter(error_class="triggers.UnknownTable"), [4]),
        (Filter(error_class="Table"), []),  # a suffix of a name is not a class name
        (Filter(since_ms=T0 + 2000), [2, 3, 4, 5]),
        (Filter(until_ms=T0 + 2000), [0, 1]),
        (Filter(since_ms=T0 + 1000, until_ms=T0 + 3000, kind="record"), [2]),
    ],
)
def test_every_filter_that_is_set_must_hold(chosen: Filter, offsets: list[int]) -> None:
    assert _offsets(_mixed(), chosen) == offsets


def test_a_filter_describes_itself_as_its_options() -> None:
    assert Filter().describe() == "" and not Filter().active()
    assert not Filter(limit=3).active()  # a limit selects among matches; it is not a filter
    chosen = Filter(resource="customers", entity_id="7", kind="record", since_ms=T0)
    assert chosen.active()
    assert chosen.describe() == (
        "--resource customers --id 7 --kind record --since 2026-11-23T02:13:20.000+00:00"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T02:13:20Z", T0),
        ("2026-11-23T02:13:20.5+00:00", T0 + 500),
        ("2026-11-23T03:13:20+01:00", T0),
        ("2026-11-23T02:13:20", T0),  # no zone: UTC
        ("2026-11-23", T0 - (2 * 3600 + 13 * 60 + 20) * 1000),
    ],
)
def test_times_are_iso_8601_and_utc_without_a_zone(text: str, expected: int) -> None:
    assert parse_time(text) == expected


def test_a_time_that_is_not_iso_8601_says_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"'yesterday' is not an ISO-8601 time \(e\.g\."):
        parse_time("yesterday")


# --- showing --------------------------------------------------------------------------------------


def test_the_table_has_one_line_per_dead_letter_and_a_short_reason() -> None:
    entries = _entries(_record("7"), _event(b"{", DecodeError("x" * 200)))
    header, record, event = table_lines(entries)
    assert header.split() == [
        *("DEAD-LETTERED", "(UTC)", "AT", "KIND", "ENTITY", "/", "SOURCE"),
        *("TENANT", "ERROR", "REASON"),
    ]
    assert record.split()[:8] == [
        *("2026-11-23", "02:13:20", "0:0", "record", "customers/7", "merchant-1"),
        *("BadRecord", "422"),
    ]
    assert record.endswith("Reach refused the record")
    assert event.split()[:7] == [
        *("2026-11-23", "02:13:21", "0:1", "event", "from"),
        *("shop.public.customers[2]@41", "-"),
    ]
    assert event.endswith(" " + "x" * 71 + "…")


def test_columns_line_up() -> None:
    lines = table_lines(_mixed())
    assert len(lines) == 7
    for column in ("AT", "KIND", "TENANT", "ERROR", "REASON"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " for line in lines), column
        assert all(line[start] != " " for line in lines), column


def test_json_keeps_a_record_whole_and_never_an_event_s_bytes() -> None:
    secret_event = _envelope("orders", {"id": 1, "email": SECRET})
    record, event = _entries(
        _record("7"), _event(secret_event, UnknownTable("no trigger on table public.orders"))
    )
    document = entry_json(record)
    assert document["kind"] == "record" and document["id"] == "7"
    assert document["record"]["payload_sha256"] == "a" * 64
    assert document["record"]["cause"] == {
        "kind": "cdc",
        "table": "public.customers",
        "op": "u",
        "topic": "shop.public.customers",
    }
    assert document["timestamp"] == "2026-11-23T02:13:20.000+00:00"
    out = json.dumps(entry_json(event))
    assert SECRET not in out and "orders" in out  # the reason names the table, never values
    assert entry_json(event)["source"] == {
        "topic": "shop.public.customers",
        "partition": 2,
        "offset": 41,
        "timestamp": "2026-11-23T02:13:15.000+00:00",
    }
    assert entry_json(event)["value_bytes"] == len(secret_event)


# --- replay planning ------------------------------------------------------------------------------


def test_a_replay_makes_each_entity_dirty_once_with_its_first_dead_letter_as_cause() -> None:
    plan = plan_replay(_mixed(), shop_definition(), now_ms=T0 + 9000)
    assert list(plan.keys) == [("customers", "7"), ("customers", "8"), ("transactions", "5")]
    seven = plan.keys[("customers", "7")]
    assert seven == DirtyKey(
        resource="customers",
        id="7",  # as the record holds it: no database is asked for the key's type
        cause=Cause(
            kind="replay",
            table="public.customers",
            op="u",
            topic=DLQ,
            partition=0,
            offset=0,
        ),
        enqueued_ms=T0 + 9000,
    )
    assert plan.per_resource() == {"customers": 2, "transactions": 1}
    assert [(e.at.offset, reason) for e, reason in plan.failures] == [
        (
            1,
            "consumer.router.debezium.DecodeError: the value is not a Debezium envelope: "
            "JSON is malformed: object keys must be strings (byte 1)",
        ),
        (4, "consumer.router.triggers.UnknownTable: no trigger on table public.orders"),
    ]
    assert plan.replayed == 4


def test_replayed_dirty_keys_follow_the_schema_and_decode() -> None:
    plan = plan_replay(_mixed(), shop_definition(), now_ms=T0)
    for key in plan.keys.values():
        raw = encode_dirty(key)
        assert schema_problems(json.loads(raw), DIRTY_SCHEMA) == []
        assert decode_dirty(raw) == key


def test_an_event_that_routes_now_is_planned_by_the_router_s_triggers() -> None:
    """Dead-lettered as an unknown table under an older definition; the shop's triggers now
    route a transaction to itself and to its customer."""
    moved = orjson.dumps(
        {
            "before": {"id": 5, "customer_id": 3},
            "after": {"id": 5, "customer_id": 8},
            "op": "u",
            "source": {"schema": "public", "table": "transactions", "ts_ms": T0, "lsn": 7},
        }
    )
    letter = _event(moved, UnknownTable("no trigger on table public.transactions"), b'{"id":5}')
    plan = plan_replay(_entries(letter), shop_definition(), now_ms=T0)
    assert sorted(plan.keys) == [("customers", "3"), ("customers", "8"), ("transactions", "5")]
    cause = plan.keys[("customers", "8")].cause
    assert (cause.kind, cause.table, cause.op, cause.topic, cause.offset) == (
        "replay",
        "public.transactions",
        "u",
        DLQ,
        0,
    )
    assert cause.source_ts_ms is None  # a replay is not a commit: no latency sample from it
    assert not plan.failures


def test_events_that_make_nothing_dirty_are_counted_not_failed() -> None:
    tombstone = _event(None, DecodeError("was a tombstone"))
    plan = plan_replay(_entries(tombstone), shop_definition(), now_ms=T0)
    assert (plan.keys, plan.failures, plan.ignored) == ({}, [], {"tombstone": 1})


def test_ids_are_kept_as_the_dead_letter_holds_them() -> None:
    """A record's id is text and stays text, whatever the key column's type: the syncer sends
    ids to Postgres as text and the query casts them. An id that is no integer is no failure
    here either (for an integer key the syncer's query says so)."""
    plan = plan_replay(_entries(_record("7"), _record("c-8")), shop_definition(), now_ms=T0)
    assert [k.id for k in plan.keys.values()] == ["7", "c-8"]
    assert not plan.failures


def test_a_record_s_text_id_and_an_event_s_integer_id_are_one_entity() -> None:
    """customers/7 dead-lettered as a record ("7") and as an event the router now routes (7):
    one dirty key, caused by the older dead letter and keeping its id."""
    event = _event(
        _envelope("customers", {"id": 7}),
        UnknownTable("no trigger on table public.customers"),
        b'{"id":7}',
    )
    routed = plan_replay(_entries(event), shop_definition(), now_ms=T0)
    assert [k.id for k in routed.keys.values()] == [7]  # the router plans the int

    plan = plan_replay(_entries(_record("7"), event), shop_definition(), now_ms=T0)
    assert list(plan.keys) == [("customers", "7")]
    (key,) = plan.keys.values()
    assert (key.id, key.cause.offset) == ("7", 0)
    assert plan.replayed == 2 and not plan.failures

    reverse = plan_replay(_entries(event, _record("7")), shop_definition(), now_ms=T0)
    assert [(k.id, k.cause.offset) for k in reverse.keys.values()] == [(7, 0)]


def test_what_cannot_be_replayed_says_why() -> None:
    unknown_resource = _record("1", resource="orders")
    rejected_key = DeadLetterEvent.from_message(
        Message(topic="shop.dirty", partition=0, offset=1, value=b"[1]"),
        ValueError("not a dirty key"),
        stage="syncer",
    )
    undecodable = Message(topic=DLQ, partition=0, offset=7, value=b"?")
    entries = [*_entries(unknown_resource, rejected_key), decode_entry(undecodable)]
    plan = plan_replay(entries, shop_definition(), now_ms=T0)
    assert plan.keys == {}
    assert [reason for _, reason in plan.failures] == [
        "no resource 'orders' in the definition any more",
        "still not a dirty key: Expected `object`, got `array`",
        "not a dead letter: no reach-sync-dlq-kind header",
    ]


# --- replaying events of lookup triggers ---------------------------------------------------------


def _membership(tmp_path: Path) -> SyncDefinition:
    path = write_membership_definition(tmp_path / "membership.yaml", "club\\..*")
    env = {**OFFLINE_ENV, "REACH_SYNC_GROUP_ID": "club", "REACH_SYNC_DIRTY_TOPIC": "club.dirty"}
    return load_definition(path, {**env, "REACH_SYNC_DEAD_LETTER_TOPIC": "club.dlq"})


def test_a_replayed_event_of_a_lookup_trigger_makes_the_looked_up_entities_dirty(
    tmp_path: Path,
) -> None:
    asked: list[tuple[str, int, list[str]]] = []

    def look_up(resource: str, position: int, lookup: str, ids: Sequence[str]) -> list[Found]:
        asked.append((resource, position, list(ids)))
        return [Found(10), Found(11)]

    member_changed = _event(
        _envelope("members", {"id": 4, "account_id": 2, "name": "Ada"}),
        Retryable("the broker was away"),
        key=b'{"id":4}',
    )
    plan = plan_replay(_entries(member_changed), _membership(tmp_path), T0, look_up)

    # The member itself (a direct trigger), and its subscriptions through one lookup.
    assert sorted(plan.keys) == [("members", "4"), ("subscriptions", "10"), ("subscriptions", "11")]
    assert asked == [("subscriptions", 1, ["4"])]
    cause = plan.keys[("subscriptions", "10")].cause
    assert (cause.kind, cause.table, cause.op) == ("replay", "public.members", "u")


def test_replaying_an_event_of_a_lookup_trigger_without_the_database_is_retryable(
    tmp_path: Path,
) -> None:
    member_changed = _event(
        _envelope("members", {"id": 4, "account_id": 2}), Retryable("away"), key=b'{"id":4}'
    )
    with pytest.raises(Retryable, match="needs the source database"):
        plan_replay(_entries(member_changed), _membership(tmp_path), T0)
