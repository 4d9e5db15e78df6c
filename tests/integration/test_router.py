"""Stage 1 on the real broker and database: Debezium events in, dirty keys and dead letters out.

Events are produced by hand (the shared fixture's real Debezium output, with and without the
schema block, plus malformed ones) so every byte is known; the router runs in a thread with the
shop definition pointed at unique topics and groups; its output is read by partition assignment,
so no group join is waited for.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from reach_devstack.postgres import PostgresConfig

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import ConfigurationError
from consumer.records.deadletter import dead_letter_record, produce_dead_letter
from consumer.router.dirty import MAX_CAUSES, Cause, DirtyKey, decode_dirty
from consumer.router.loop import RouterStats, run_router
from tests.membership import apply_membership_schema, membership_definition

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "shop.yaml"
SHOP_SQL = ROOT / "devstack" / "reach_devstack" / "shop.sql"
FIXTURE = ROOT / "tests" / "fixtures" / "debezium" / "postgres-json-with-schemas.jsonl"
SOURCE_PARTITIONS = 4
DIRTY_PARTITIONS = 8  # examples/shop.yaml
# Joining takes about half the session timeout on the local broker (docs/local-stack.md).
ENV = {
    "REACH_SYNC_SESSION_TIMEOUT_MS": "6000",
    "REACH_SYNC_LEAVE_GROUP_ON_CLOSE": "false",
    "REACH_SYNC_PARTNER_ID": "partner-1",
    "REACH_SYNC_JWT_SECRET": "unused-in-stage-1",
    "REACH_SYNC_REACH_URL": "http://127.0.0.1:1",
    "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:1/0",
}
READ_TIMEOUT_S = 30.0
# (topic, partition, key, value) to produce
Event = tuple[str, int, bytes | None, bytes | None]


@dataclass(frozen=True)
class Produced:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _shop_definition(
    tmp_path: Path, broker: str, database: PostgresConfig, prefix: str
) -> SyncDefinition:
    """examples/shop.yaml on this test's own topics and group, validated like any definition."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["source"]["kafka"]["topic_pattern"] = rf"{prefix}\.public\.(customers|transactions)$"
    data["topics"] = {
        "dirty": f"{prefix}.dirty",
        "dirty_partitions": DIRTY_PARTITIONS,
        "dead_letter": f"{prefix}.dead-letter",
    }
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {
        **ENV,
        "REACH_SYNC_BOOTSTRAP_SERVERS": broker,
        "REACH_SYNC_DATABASE_URL": database.dsn,
        "REACH_SYNC_GROUP_ID": prefix,
    }
    return load_definition(path, env)


def _apply_shop_schema(database: PostgresConfig, *statements: str) -> None:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(SHOP_SQL.read_text())
        for statement in statements:
            conn.execute(statement)


def _create_topics(broker: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(t, SOURCE_PARTITIONS, 1) for t in topics]).values():
        future.result(timeout=10)


def _produce(broker: str, events: list[Event]) -> list[Produced]:
    """Produce (topic, partition, key, value) in order; return where each one landed."""
    landed: list[Produced] = []

    def on_delivery(error: KafkaError | None, msg: Message) -> None:
        assert error is None, error
        landed.append(
            Produced(
                msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value()
            )
        )

    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for topic, partition, key, value in events:
        producer.produce(topic, value, key, partition=partition, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    return landed


def _fixture_events(prefix: str, with_schemas: bool) -> list[Event]:
    """The shared fixture's table events on this test's topics, each key on a fixed partition."""
    events = []
    for line in FIXTURE.read_text().splitlines():
        record = json.loads(line)
        table = record["topic"].removeprefix("shop.")
        if table not in ("public.customers", "public.transactions"):
            continue  # transaction metadata goes to its own topic, which the router does not read
        key, value = record["key"], record["value"]
        if not with_schemas:
            key, value = key["payload"], value and value["payload"]
        partition = _key_id(key) % SOURCE_PARTITIONS
        events.append((f"{prefix}.{table}", partition, _bytes(key), _bytes(value)))
    return events


def _key_id(key: Any) -> int:
    return int((key.get("payload") or key)["id"])


def _bytes(part: Any) -> bytes | None:
    return None if part is None else orjson.dumps(part)


def _envelope(table: str, op: str, before: Any, after: Any) -> bytes:
    """A Debezium envelope without the schema block, as JsonConverter writes it."""
    source = {"schema": "public", "table": table, "ts_ms": 1_795_400_000_000, "lsn": 33_000_000}
    return orjson.dumps({"before": before, "after": after, "op": op, "source": source})


def _read(
    broker: str, topic: str, partitions: int, done: Callable[[list[Message]], bool]
) -> list[Message]:
    """Read a topic from the beginning by assignment until ``done`` holds or time runs out."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "router-tests-unused",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    messages: list[Message] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        while not done(messages) and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
    finally:
        consumer.close()
    return messages


class RouterThread:
    """run_router in a thread; ``stop()`` ends it and returns its stats, or raises its error."""

    def __init__(self, definition: SyncDefinition) -> None:
        self.stop_event = threading.Event()
        self.latest: RouterStats | None = None
        self._result: RouterStats | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(definition,), daemon=True)
        self._thread.start()

    def _run(self, definition: SyncDefinition) -> None:
        try:
            self._result = run_router(definition, self.stop_event, on_stats=self._seen)
        except BaseException as exc:
            self._result = exc

    def _seen(self, stats: RouterStats) -> None:
        self.latest = stats

    def stop(self, timeout_s: float = 30.0) -> RouterStats:
        self.stop_event.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the router did not stop"
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        return self._result


@pytest.fixture
def start_router() -> Iterator[Callable[[SyncDefinition], RouterThread]]:
    """Start routers; any a test did not stop itself are stopped when it ends."""
    started: list[RouterThread] = []

    def start(definition: SyncDefinition) -> RouterThread:
        started.append(RouterThread(definition))
        return started[-1]

    yield start
    for router in started:
        router.stop_event.set()


@pytest.fixture
def prefix(unique: Callable[[str], str]) -> str:
    return unique("router")


@pytest.fixture
def shop(tmp_path: Path, broker: str, database: PostgresConfig, prefix: str) -> SyncDefinition:
    """The shop schema in a fresh database, its source topics, and the definition over them."""
    _apply_shop_schema(database)
    _create_topics(broker, [f"{prefix}.public.customers", f"{prefix}.public.transactions"])
    return _shop_definition(tmp_path, broker, database, prefix)


def _triggers(messages: list[Message]) -> int:
    return sum(decode_dirty(m.value() or b"").triggers for m in messages)


def _dirty(messages: list[Message]) -> list[tuple[str, DirtyKey]]:
    return [((m.key() or b"").decode(), decode_dirty(m.value() or b"")) for m in messages]


def test_changes_become_dirty_keys_and_bad_events_dead_letters(
    shop: SyncDefinition,
    broker: str,
    prefix: str,
    start_router: Callable[[SyncDefinition], RouterThread],
) -> None:
    customers, transactions = f"{prefix}.public.customers", f"{prefix}.public.transactions"
    good = _fixture_events(prefix, with_schemas=True) + _fixture_events(prefix, with_schemas=False)
    # A sale moved from customer 1 to 2: transactions has FULL identity, so a real before image.
    moved = _envelope(
        "transactions", "u", {"id": 77, "customer_id": 1}, {"id": 77, "customer_id": 2}
    )
    bad: list[Event] = [
        (customers, 0, b'{"id":1}', b"{not json"),
        (customers, 0, b'{"id":1}', _envelope("customers", "x", None, {"id": 1})),
        (customers, 0, None, _envelope("customers", "u", None, {"id": 1})),
        (customers, 0, b'{"id":1}', _envelope("orders", "c", None, {"id": 1})),
    ]
    after_bad: list[Event] = [
        (transactions, 0, b'{"id":77}', moved),
        (customers, 0, b'{"id":9}', _envelope("customers", "u", None, {"id": 9})),
    ]
    router = start_router(shop)
    produced = _produce(broker, good + bad + after_bad)

    # Each pass over the fixture triggers 14 entities, the moved sale 3, customer 9 one. The
    # router merges an entity's triggers within one batch into one key that counts them.
    expected = 2 * 14 + 3 + 1
    dirty_messages = _read(
        broker, shop.topics.dirty, DIRTY_PARTITIONS, lambda m: _triggers(m) >= expected
    )
    dead = _read(broker, shop.topics.dead_letter, 1, lambda m: len(m) >= len(bad))
    stats = router.stop()

    dirty = _dirty(dirty_messages)
    triggered: Counter[str] = Counter()
    for key, value in dirty:
        triggered[key] += value.triggers
    assert triggered == Counter(
        {
            "customers/102": 2 * 5,
            "transactions/302": 2 * 2,
            "customers/6": 2,
            "transactions/5": 2,
            "transactions/6": 2,  # its null customer_id (the fixture's quirk) triggers nobody
            "customers/7": 2,
            "customers/5000": 2 * 2,
            "customers/100000": 2,
            "customers/2": 1,
            "customers/1": 1,
            "transactions/77": 1,
            "customers/9": 1,
        }
    )
    _assert_causes_point_at_their_events(dirty, produced, prefix)
    _assert_one_partition_per_entity(dirty_messages)
    causes_102 = {c.table for k, d in dirty if k == "customers/102" for c in d.causes()}
    assert causes_102 == {"public.customers", "public.transactions"}

    _assert_dead_letters(dead, bad, produced)

    assert stats.events == len(produced)
    # Neither the 4 tombstones nor the 3 undecodable events are changes; the unknown table's is.
    assert stats.changes == len(produced) - 4 - 3
    assert stats.ignored == Counter({"tombstone": 4})
    assert stats.dead_lettered == len(bad)
    assert stats.triggers == expected
    assert stats.dirty_keys == len(dirty) <= expected
    assert stats.commits >= 1 and stats.retries == 0
    assert router.latest is not None and router.latest.events <= stats.events

    # Committed offsets cover exactly what was produced, partition by partition.
    end: dict[tuple[str, int], int] = {}
    for p in produced:
        end[(p.topic, p.partition)] = max(end.get((p.topic, p.partition), 0), p.offset + 1)
    assert _committed(broker, f"{prefix}.router", [customers, transactions]) == end


def _assert_causes_point_at_their_events(
    dirty: list[tuple[str, DirtyKey]], produced: list[Produced], prefix: str
) -> None:
    by_position = {(p.topic, p.partition, p.offset): p for p in produced}
    for key, value in dirty:
        assert key == f"{value.resource}/{value.id}"
        assert value.enqueued_ms > 0
        assert len(value.causes()) == min(value.triggers, MAX_CAUSES)
        for cause in value.causes():
            assert cause.kind == "cdc"
            assert cause.topic == f"{prefix}.{cause.table}"
            source = by_position[(cause.topic, cause.partition or 0, cause.offset or 0)]
            assert source.value is not None
            envelope = orjson.loads(source.value)
            envelope = envelope.get("payload", envelope)
            assert (cause.op, cause.lsn) == (envelope["op"], envelope["source"]["lsn"])
            assert cause.source_ts_ms == envelope["source"]["ts_ms"]


def _assert_one_partition_per_entity(messages: list[Message]) -> None:
    partitions: dict[bytes | None, set[int | None]] = {}
    for m in messages:
        partitions.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions.values()), partitions


def _assert_dead_letters(
    dead: list[Message],
    bad: list[Event],
    produced: list[Produced],
) -> None:
    """The original bytes, where they came from and why, in the order they came."""
    assert len(dead) == len(bad)
    reasons = []
    for letter, (topic, _, key, value) in zip(dead, bad, strict=True):
        assert (letter.key(), letter.value()) == (key, value)
        headers = _headers(letter)
        source = next(p for p in produced if (p.key, p.value) == (key, value))
        assert headers["reach-sync-dlq-kind"] == "event"
        assert headers["reach-sync-dlq-topic"] == topic
        assert headers["reach-sync-dlq-partition"] == "0"
        assert headers["reach-sync-dlq-offset"] == str(source.offset)
        assert int(headers["reach-sync-dlq-timestamp"]) > 0
        reasons.append((headers["reach-sync-dlq-error-class"], headers["reach-sync-dlq-reason"]))
    assert [cls for cls, _ in reasons] == [
        "consumer.router.debezium.DecodeError",
        "consumer.router.debezium.DecodeError",
        "consumer.router.debezium.DecodeError",
        "consumer.router.triggers.UnknownTable",
    ]
    assert reasons[0][1].startswith("the value is not a Debezium envelope")
    assert reasons[1][1] == "unknown op 'x'"
    assert reasons[2][1].startswith("the event has no key")
    assert reasons[3][1] == "no trigger on table public.orders"


def _headers(message: Message) -> dict[str, str]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {k: v.decode() if isinstance(v, bytes) else (v or "") for k, v in pairs}


def _committed(broker: str, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed(
            [TopicPartition(t, p) for t in topics for p in range(SOURCE_PARTITIONS)], timeout=10
        )
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}


def test_a_replica_identity_mismatch_fails_at_startup_naming_the_table(
    tmp_path: Path, broker: str, database: PostgresConfig, prefix: str
) -> None:
    _apply_shop_schema(database, "ALTER TABLE public.transactions REPLICA IDENTITY DEFAULT")
    definition = _shop_definition(tmp_path, broker, database, prefix)
    with pytest.raises(ConfigurationError) as caught:
        run_router(definition, threading.Event())
    message = str(caught.value)
    assert message.startswith("public.transactions: a trigger has replica_identity: full")
    assert "the database has REPLICA IDENTITY DEFAULT" in message
    assert "ALTER TABLE public.transactions REPLICA IDENTITY FULL" in message
    assert "public.customers" not in message


def test_a_record_dead_letter_goes_through_a_producer_as_json(broker: str, prefix: str) -> None:
    topic = f"{prefix}.dead-letter"
    _create_topics(broker, [topic])
    record = dead_letter_record(
        resource="customers",
        entity_id=7,
        tenant="merchant-1",
        cause=Cause(kind="cdc", table="public.customers", op="u"),
        error=ValueError("rejected"),
        attempts=3,
        first_attempt_ms=1,
        last_attempt_ms=2,
        payload_sha256="0" * 64,
    )
    producer = Producer({"bootstrap.servers": broker})
    produce_dead_letter(producer, topic, record)
    assert producer.flush(10) == 0
    (letter,) = _read(broker, topic, SOURCE_PARTITIONS, lambda m: len(m) >= 1)
    assert letter.key() == b"customers/7"
    assert _headers(letter)["reach-sync-dlq-kind"] == "record"
    assert json.loads(letter.value() or b"")["attempts"] == 3


def _customer_updates(topic: str, ids: range) -> list[Event]:
    def update(i: int) -> bytes:
        return _envelope("customers", "u", None, {"id": i})

    return [(topic, i % SOURCE_PARTITIONS, b'{"id":%d}' % i, update(i)) for i in ids]


def test_a_second_router_takes_over_partitions_without_rerouting_anything(
    shop: SyncDefinition,
    broker: str,
    prefix: str,
    start_router: Callable[[SyncDefinition], RouterThread],
) -> None:
    customers = f"{prefix}.public.customers"
    first = start_router(shop)
    produced = _produce(broker, _customer_updates(customers, range(0, 200)))
    _read(broker, shop.topics.dirty, DIRTY_PARTITIONS, lambda m: len(m) >= 200)

    second = start_router(shop)  # joins: a cooperative rebalance moves partitions to it
    deadline = time.monotonic() + READ_TIMEOUT_S
    next_id = 200
    while second.latest is None and time.monotonic() < deadline:
        produced += _produce(broker, _customer_updates(customers, range(next_id, next_id + 8)))
        next_id += 8
        time.sleep(0.2)
    dirty = _read(broker, shop.topics.dirty, DIRTY_PARTITIONS, lambda m: len(m) >= next_id)
    stats = [first.stop(), second.stop()]

    assert all(s.events > 0 for s in stats), "both routers should have routed a share"
    # Every event routed once: what the first finished before the rebalance, it committed.
    assert sum(s.events for s in stats) == next_id == len(dirty)
    assert sorted(int((m.key() or b"").split(b"/")[1]) for m in dirty) == list(range(next_id))
    end: dict[tuple[str, int], int] = {}
    for p in produced:
        end[(p.topic, p.partition)] = max(end.get((p.topic, p.partition), 0), p.offset + 1)
    assert _committed(broker, f"{prefix}.router", [customers]) == end


# --- lookup (fan-out) triggers ---------------------------------------------------------------

MEMBERS = 20
# Like the definition's, plus the input as a second column: each subscription's dirty key then
# carries the cause of its own member's event rather than the batch's first.
SUBSCRIPTIONS_WITH_INPUT = (
    "SELECT id, member_id FROM subscriptions WHERE member_id = ANY(%(ids)s::bigint[])"
)


def _membership(
    tmp_path: Path,
    broker: str,
    database: PostgresConfig,
    prefix: str,
    lookups: dict[str, str] | None = None,
) -> SyncDefinition:
    """tests/membership.py's schema, seeded (accounts 1-2; members 1-20 in account 1, each with
    subscriptions 100+m and 200+m), its source topics, and its definition on them; ``lookups``
    replaces lookups by resource."""
    apply_membership_schema(database.dsn)
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts VALUES (1, 'acct-1'), (2, 'acct-2')")
        conn.execute(
            "INSERT INTO members SELECT m, 1, 'member ' || m FROM generate_series(1, %s) m",
            (MEMBERS,),
        )
        conn.execute(
            "INSERT INTO subscriptions SELECT s * 100 + m, m, 'basic'"
            " FROM generate_series(1, %s) m, generate_series(1, 2) s",
            (MEMBERS,),
        )
    _create_topics(broker, [f"{prefix}.public.{t}" for t in ("members", "invoices")])
    data = membership_definition(rf"^{prefix}\.public\.(members|invoices)$")
    for name, lookup in (lookups or {}).items():
        resource = data["resources"][name]
        resource["triggers"] = [
            {**t, "lookup": lookup} if "lookup" in t else t for t in resource["triggers"]
        ]
    path = tmp_path / "membership.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {
        **ENV,
        "REACH_SYNC_BOOTSTRAP_SERVERS": broker,
        "REACH_SYNC_DATABASE_URL": database.dsn,
        "REACH_SYNC_GROUP_ID": prefix,
        "REACH_SYNC_DIRTY_TOPIC": f"{prefix}.dirty",
        "REACH_SYNC_DEAD_LETTER_TOPIC": f"{prefix}.dead-letter",
    }
    return load_definition(path, env)


def _member_moved(prefix: str, member: int) -> Event:
    after = {"id": member, "account_id": 2, "name": f"member {member}"}
    value = _envelope("members", "u", None, after)
    return (f"{prefix}.public.members", member % SOURCE_PARTITIONS, b'{"id":%d}' % member, value)


def _invoice_moved(prefix: str, invoice: int, old: int, new: int) -> Event:
    value = _envelope(
        "invoices",
        "u",
        {"id": invoice, "subscription_id": old, "total_cents": 100},
        {"id": invoice, "subscription_id": new, "total_cents": 100},
    )
    return (f"{prefix}.public.invoices", 0, b'{"id":%d}' % invoice, value)


def test_lookup_triggers_run_one_query_per_trigger_per_batch(
    tmp_path: Path,
    broker: str,
    database: PostgresConfig,
    prefix: str,
    start_router: Callable[[SyncDefinition], RouterThread],
) -> None:
    definition = _membership(
        tmp_path, broker, database, prefix, {"subscriptions": SUBSCRIPTIONS_WITH_INPUT}
    )
    # A backlog before the router starts, so that its batches are large: every member moves
    # (its subscriptions, found through the lookup, change tenant), and invoices 1-5 move from
    # subscription 200+k to 100+k (two hops: the member of both, k, gets a new total).
    events = [_member_moved(prefix, m) for m in range(1, MEMBERS + 1)]
    events += [_invoice_moved(prefix, k, 200 + k, 100 + k) for k in range(1, 6)]
    produced = _produce(broker, events)
    router = start_router(definition)
    expected = MEMBERS + 2 * MEMBERS + 5  # direct members, their subscriptions, invoices' members
    messages = _read(broker, definition.topics.dirty, 4, lambda m: _triggers(m) >= expected)
    stats = router.stop()

    dirty = dict(_dirty(messages))
    subscriptions = {f"subscriptions/{s * 100 + m}" for m in range(1, MEMBERS + 1) for s in (1, 2)}
    assert set(dirty) == {f"members/{m}" for m in range(1, MEMBERS + 1)} | subscriptions
    # Each subscription's cause is its own member's event (the lookup's second column).
    by_position = {(p.topic, p.partition, p.offset): p for p in produced}
    for name in subscriptions:
        cause = dirty[name].cause
        assert (cause.table, cause.op) == ("public.members", "u")
        source = by_position[(cause.topic or "", cause.partition or 0, cause.offset or 0)]
        assert orjson.loads(source.key or b"")["id"] == int(name.split("/")[1]) % 100
    # Members 1-5 were triggered by their own change and by an invoice, through the lookup
    # (in one dirty key, or two when the events came in different batches).
    tables: dict[str, set[str | None]] = {}
    for key, value in _dirty(messages):
        tables.setdefault(key, set()).update(c.table for c in value.causes())
    for k in range(1, 6):
        assert tables[f"members/{k}"] == {"public.members", "public.invoices"}
    assert stats.triggers == expected and stats.dirty_keys >= len(dirty)
    assert stats.looked_up == 2 * MEMBERS + 5 and stats.retries == 0
    # One query per lookup trigger per batch that had inputs for it, never one per event.
    assert 2 <= stats.lookups <= 2 * stats.batches
    assert stats.lookups < len(events)


def test_a_failing_lookup_holds_the_batch_back_until_it_succeeds(
    tmp_path: Path,
    broker: str,
    database: PostgresConfig,
    prefix: str,
    start_router: Callable[[SyncDefinition], RouterThread],
) -> None:
    # Fails with division by zero for any row while lookup_switch is empty; with no ids (the
    # startup check) no row is computed and it passes (``0 * id`` makes it per row).
    failing = (
        "SELECT member_id FROM subscriptions WHERE id = ANY(%(ids)s::bigint[])"
        " AND 1 / ((SELECT count(*)::int FROM lookup_switch) + 0 * id) = 1"
    )
    definition = _membership(tmp_path, broker, database, prefix, {"members": failing})
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE lookup_switch (on_ bool)")
    router = start_router(definition)
    _produce(broker, [_invoice_moved(prefix, 1, 203, 107)])

    deadline = time.monotonic() + READ_TIMEOUT_S
    while (router.latest is None or router.latest.retries < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert router.latest is not None and router.latest.retries >= 2, router.latest
    assert router.latest.dirty_keys == 0 and router.latest.batches == 0

    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO lookup_switch VALUES (true)")
    messages = _read(broker, definition.topics.dirty, 4, lambda m: len(m) >= 2)
    stats = router.stop()
    assert sorted(key for key, _ in _dirty(messages)) == ["members/3", "members/7"]
    assert all(d.cause.table == "public.invoices" for _, d in _dirty(messages))
    assert stats.retries >= 2 and stats.batches == 1 and stats.lookups == stats.retries + 1
