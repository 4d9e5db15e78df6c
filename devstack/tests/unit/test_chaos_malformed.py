"""The chaos run's malformed events and bad rows, offline: enough distinct kinds, each call's
bytes its own, and every event dead-lettered by the router's own decoding and planning with the
reason it claims.

The router has no public seam that turns one message into a dead letter without a broker: its
``_route`` is a private method of a loop that owns a consumer and a producer. ``_dead_letter_of``
below does what ``_route`` does with one message, with the same public parts (EventDecoder with
the definition's image columns, plan_change, ``except (DecodeError, BadRecord)``, DeadLetterEvent,
dead_letter_message); devstack/tests/integration/test_chaos_malformed.py runs the real loop.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from reach_devstack.chaos.malformed import (
    POISON_KINDS,
    MalformedEvent,
    SourceEvent,
    bad_rows,
    good_event,
    malformed_events,
    poison_events,
)

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import BadRecord
from consumer.records.deadletter import (
    HEADER_KIND,
    HEADER_REASON,
    HEADER_TOPIC,
    DeadLetterEvent,
    DeadLetterMessage,
    dead_letter_message,
)
from consumer.router.debezium import DecodeError, EventDecoder, Ignored
from consumer.router.triggers import DirtyEntity, TriggerIndex, plan_change

EXAMPLE = Path(__file__).parents[3] / "examples" / "shop.yaml"
PREFIX = "chaos"
TOPICS = {f"{PREFIX}.public.customers", f"{PREFIX}.public.transactions"}
MARKERS = (0, 7, 987_654_321, 2**70)
KINDS = [event.kind for event in malformed_events(PREFIX, 0)]
# Not a loopback address is ever contacted: nothing here connects.
ENV = {
    "REACH_SYNC_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "REACH_SYNC_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
    "REACH_SYNC_PARTNER_ID": "partner-1",
    "REACH_SYNC_JWT_SECRET": "unused-offline",
    "REACH_SYNC_REACH_URL": "http://127.0.0.1:9",
    "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:9/0",
}


def _definition() -> SyncDefinition:
    return load_definition(EXAMPLE, ENV)


INDEX = TriggerIndex.from_definition(_definition())


def _decoder(primed: bool) -> EventDecoder:
    """The router's decoder; ``primed``: it has seen good events of both topics with the schema
    block, so malformed ones that start with the same block take its shortcut first."""
    decoder = EventDecoder(INDEX.image_columns())
    if primed:
        for table in ("customers", "transactions"):
            good = good_event(PREFIX, table, 1, with_schema=True)
            decoder.decode(good.key, good.value, good.topic)
    return decoder


def _message(topic: str, key: bytes | None, value: bytes | None) -> Message:
    return Message(
        topic=topic,
        partition=3,
        offset=41,
        key=key,
        value=value,
        timestamp=(TIMESTAMP_CREATE_TIME, 1_796_000_000_000),
    )


def _dead_letter_of(
    decoder: EventDecoder, topic: str, key: bytes | None, value: bytes | None
) -> DeadLetterMessage | list[DirtyEntity] | Ignored:
    """What the router makes of one message (loop.py, ``_Router._route``): its dead letter, or
    the entities it makes dirty, or why it is ignored. Anything else it raises would stop the
    router, and is raised here."""
    message = _message(topic, key, value)
    try:
        event = decoder.decode(message.key(), message.value(), message.topic())
        if isinstance(event, Ignored):
            return event
        return plan_change(event, INDEX).entities
    except (DecodeError, BadRecord) as exc:
        return dead_letter_message(DeadLetterEvent.from_message(message, exc))


def _headers(letter: DeadLetterMessage) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else (v or "") for k, v in letter.headers}


def test_there_are_at_least_twenty_distinct_kinds_on_the_shop_topics() -> None:
    events = malformed_events(PREFIX, 5)
    kinds = [e.kind for e in events]
    assert len(kinds) >= 20
    assert len(set(kinds)) == len(kinds), sorted(k for k in kinds if kinds.count(k) > 1)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", k) for k in kinds), kinds
    assert {e.topic for e in events} == TOPICS
    assert all(e.reason.strip() for e in events)
    assert len({(e.topic, e.key, e.value) for e in events}) == len(events)
    # Both shapes of Connect's JSON, and events of both tables.
    with_schema = [e for e in events if (e.value or b"").startswith(b'{"schema":')]
    assert 8 <= len(with_schema) <= len(events) - 8
    assert set(POISON_KINDS).issubset(kinds)


def test_every_call_makes_its_own_bytes() -> None:
    first, second = malformed_events(PREFIX, 111_111_111), malformed_events(PREFIX, 222_222_222)
    assert [e.kind for e in first] == [e.kind for e in second]
    for one, two in zip(first, second, strict=True):
        assert (one.key, one.value) != (two.key, two.value), one.kind
        assert one.reason == two.reason and one.topic == two.topic, one.kind
        # The marker is in the bytes themselves, not only in what they decode to.
        assert b"111111111" in (one.key or b"") + (one.value or b""), one.kind
    # The same marker, the same bytes: a checker can rebuild what a run produced.
    assert malformed_events(PREFIX, 111_111_111) == first


@pytest.mark.parametrize("primed", [False, True], ids=["cold", "primed"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_event_is_dead_lettered_with_its_reason(kind: str, primed: bool) -> None:
    for marker in MARKERS:
        decoder = _decoder(primed)
        event = next(e for e in malformed_events(PREFIX, marker) if e.kind == kind)
        outcome = _dead_letter_of(decoder, event.topic, event.key, event.value)
        assert isinstance(outcome, DeadLetterMessage), (marker, outcome)
        headers = _headers(outcome)
        assert event.reason in headers[HEADER_REASON], (marker, headers[HEADER_REASON])
        assert (headers[HEADER_KIND], headers[HEADER_TOPIC]) == ("event", event.topic)
        # The dead letter keeps the original bytes: how a checker finds it.
        assert (outcome.key, outcome.value) == (event.key, event.value)


def test_the_primed_decoder_takes_its_shortcut_for_the_schema_block_kinds() -> None:
    """The schema-block events start with the block good events taught the decoder: they go
    through the shortcut first, and still end with the full path's reason."""
    decoder = _decoder(primed=True)
    before = decoder.shortcuts
    for event in malformed_events(PREFIX, 3):
        _dead_letter_of(decoder, event.topic, event.key, event.value)
    assert decoder.shortcuts - before >= 8


@pytest.mark.parametrize("with_schema", [False, True], ids=["bare", "schema"])
def test_good_events_of_the_same_build_make_their_entities_dirty(with_schema: bool) -> None:
    """The control: the builder's valid events route, so each malformed kind fails by its
    defect alone."""
    decoder = _decoder(primed=False)
    customer = good_event(PREFIX, "customers", 41, with_schema=with_schema)
    sale = good_event(PREFIX, "transactions", 42, with_schema=with_schema, customer_id=41)
    assert _dead_letter_of(decoder, customer.topic, customer.key, customer.value) == [
        DirtyEntity("customers", 41)
    ]
    assert _dead_letter_of(decoder, sale.topic, sale.key, sale.value) == [
        DirtyEntity("customers", 41),
        DirtyEntity("transactions", 42),
    ]
    assert isinstance(customer, SourceEvent) and customer.topic in TOPICS


@pytest.mark.parametrize("kind", POISON_KINDS)
def test_a_deeply_nested_event_is_dead_lettered(kind: str) -> None:
    event: MalformedEvent = next(e for e in poison_events(PREFIX, 9) if e.kind == kind)
    outcome = _dead_letter_of(_decoder(primed=True), event.topic, event.key, event.value)
    assert isinstance(outcome, DeadLetterMessage)
    assert event.reason in _headers(outcome)[HEADER_REASON]


def test_bad_rows_are_distinct_kinds_with_their_sql_and_marker() -> None:
    rows = bad_rows(31_337)
    kinds = [r.kind for r in rows]
    assert len(kinds) >= 3 and len(set(kinds)) == len(kinds)
    assert {r.resource for r in rows} == {"customers", "transactions"}
    assert any(r.sandbox_differs for r in rows) and not all(r.sandbox_differs for r in rows)
    for row in rows:
        assert row.entity_id == "" and row.reason.strip()
        assert row.statements and row.statements[-1][0].rstrip().endswith("RETURNING id")
        for statement, params in row.statements:
            assert statement.count("%s") == len(params), (row.kind, statement)
        # Each call's rows are its own (emails, names), never another call's.
        assert any("31337" in str(p) for _, params in row.statements for p in params), row.kind
