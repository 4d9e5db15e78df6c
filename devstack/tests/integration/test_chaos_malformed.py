"""The chaos run's malformed input on real servers: every malformed event dead-lettered once, by
the real router, with its reason, while the good events around it are routed; every bad row a
``record`` dead letter of the syncer's window sink with its reason, the rest of the shop in the
sandbox, and the sandbox different from the database exactly where a row says it is.

The router runs in a thread on the real broker and Postgres with the shop definition on this
test's own topics; its output is read by partition assignment. The bad rows go through the real
WindowSink (recompute on Postgres, delivery to a sandbox with the shop's Reach schemas, dead
letters and audit on the broker): the syncer without its consumer loop.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

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
from reach_devstack.chaos.malformed import (
    BadRow,
    MalformedEvent,
    SourceEvent,
    create_bad_rows,
    good_event,
    malformed_events,
    poison_events,
)
from reach_devstack.postgres import PostgresConfig
from reach_devstack.shop import apply_schema, seed
from reach_devstack.stack import DEV_TENANTS, with_shop_schemas
from reach_devstack.verify import verify_sandbox
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxServer,
    running_sandbox,
    sandbox_config,
)

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.kafka import producer_settings
from consumer.reach.client import ReachClient
from consumer.records.audit import AuditWriter, ensure_audit_topic
from consumer.records.deadletter import (
    HEADER_ERROR_CLASS,
    HEADER_KIND,
    HEADER_REASON,
    HEADER_STAGE,
    HEADER_TOPIC,
)
from consumer.router.dirty import Cause, DirtyKey
from consumer.router.loop import RouterStats, run_router
from consumer.router.topics import ensure_topics
from consumer.sink.dedup import LastSentStore
from consumer.sink.recompute import SourceDatabase
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window

EXAMPLE = Path(__file__).parents[3] / "examples" / "shop.yaml"
SOURCE_PARTITIONS = 2
READ_TIMEOUT_S = 30.0
MARKER = 424_242
TENANTS = [external for _, external in DEV_TENANTS]


# --- the router ---------------------------------------------------------------------------------


def _definition(tmp_path: Path, prefix: str, env: dict[str, str]) -> SyncDefinition:
    """examples/shop.yaml on this test's own source topics, group, output topics and keys."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["source"]["kafka"]["topic_pattern"] = rf"^{prefix}\.public\.(customers|transactions)$"
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_definition(
        path,
        {
            "REACH_SYNC_PARTNER_ID": PARTNER_ID,
            "REACH_SYNC_JWT_SECRET": PARTNER_SECRET,
            "REACH_SYNC_REACH_URL": "http://127.0.0.1:9",
            "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:9/0",
            "REACH_SYNC_GROUP_ID": prefix,
            "REACH_SYNC_REDIS_PREFIX": f"reach-sync:{prefix}",
            "REACH_SYNC_DIRTY_TOPIC": f"{prefix}.dirty",
            "REACH_SYNC_DEAD_LETTER_TOPIC": f"{prefix}.dead-letter",
            "REACH_SYNC_AUDIT_TOPIC": f"{prefix}.audit",
            # Joining takes about half the session timeout on the local broker.
            "REACH_SYNC_SESSION_TIMEOUT_MS": "6000",
            "REACH_SYNC_LEAVE_GROUP_ON_CLOSE": "false",
            **env,
        },
    )


class _Router:
    """run_router in a thread; ``stop()`` returns its stats, or raises what stopped it."""

    def __init__(self, definition: SyncDefinition) -> None:
        self.stop_event = threading.Event()
        self._result: RouterStats | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(definition,), daemon=True)
        self._thread.start()

    def _run(self, definition: SyncDefinition) -> None:
        try:
            self._result = run_router(definition, self.stop_event)
        except BaseException as exc:
            self._result = exc

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> RouterStats:
        self.stop_event.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the router did not stop"
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        return self._result


@pytest.fixture
def prefix(unique: Callable[[str], str]) -> str:
    return unique("chaos")


@pytest.fixture
def shop(tmp_path: Path, broker: str, database: PostgresConfig, prefix: str) -> SyncDefinition:
    """The shop schema in a fresh database (the router checks its replica identities), the
    source topics, and the definition over them."""
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        apply_schema(conn)
    admin = AdminClient({"bootstrap.servers": broker})
    topics = [f"{prefix}.public.{table}" for table in ("customers", "transactions")]
    new = [NewTopic(topic, SOURCE_PARTITIONS, 1) for topic in topics]
    for future in admin.create_topics(new).values():
        future.result(timeout=10)
    env = {"REACH_SYNC_BOOTSTRAP_SERVERS": broker, "REACH_SYNC_DATABASE_URL": database.dsn}
    return _definition(tmp_path, prefix, env)


@pytest.fixture
def routers() -> Iterator[Callable[[SyncDefinition], _Router]]:
    started: list[_Router] = []

    def start(definition: SyncDefinition) -> _Router:
        started.append(_Router(definition))
        return started[-1]

    yield start
    for router in started:
        router.stop_event.set()


def _produce(broker: str, events: list[tuple[str, bytes | None, bytes | None]]) -> None:
    """In order, all on partition 0 of their topic: what comes after a malformed event in its
    partition must still be routed."""
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for topic, key, value in events:
        producer.produce(topic, value, key, partition=0, on_delivery=on_delivery)
    assert producer.flush(30) == 0 and not failures, failures


def _consumer(broker: str, topic: str) -> Consumer:
    """A consumer of every partition of ``topic`` from the beginning, by assignment."""
    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": "chaos-tests-unused", "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return consumer


def _read(broker: str, topic: str, done: Callable[[list[Message]], bool]) -> list[Message]:
    """Read ``topic`` from the beginning until ``done`` holds or time runs out."""
    consumer = _consumer(broker, topic)
    try:
        messages: list[Message] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while not done(messages) and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
        return messages
    finally:
        consumer.close()


def _read_to_end(broker: str, topic: str) -> list[Message]:
    """Every message ``topic`` holds now: up to each partition's high watermark."""
    consumer = _consumer(broker, topic)
    try:
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in consumer.assignment()
        }
        messages: list[Message] = []
        seen = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while any(seen[p] < end for p, end in ends.items()):
            assert time.monotonic() < deadline, f"{topic}: read {seen} of {ends}"
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is None:
                    messages.append(message)
                    seen[message.partition() or 0] = (message.offset() or 0) + 1
        return messages
    finally:
        consumer.close()


def _headers(message: Message) -> dict[str, str]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {k: v.decode() if isinstance(v, bytes) else (v or "") for k, v in pairs}


def _good_events(prefix: str, count: int) -> tuple[list[SourceEvent], set[str]]:
    """``count`` valid events of both tables and shapes, and the dirty keys they must give."""
    events, expected = [], set()
    for n in range(count):
        with_schema = n % 3 == 0
        if n % 2 == 0:
            events.append(good_event(prefix, "customers", 1000 + n, with_schema=with_schema))
            expected.add(f"customers/{1000 + n}")
        else:
            sale = good_event(
                prefix, "transactions", 2000 + n, with_schema=with_schema, customer_id=3000 + n
            )
            events.append(sale)
            expected |= {f"transactions/{2000 + n}", f"customers/{3000 + n}"}
    return events, expected


def test_every_malformed_event_is_dead_lettered_once_and_nothing_good_is_held_up(
    shop: SyncDefinition,
    broker: str,
    prefix: str,
    routers: Callable[[SyncDefinition], _Router],
) -> None:
    malformed = malformed_events(prefix, MARKER)
    good, expected_dirty = _good_events(prefix, len(malformed) + 1)
    # good, bad, good, bad, ..., good: every malformed event has good ones before and after it.
    sequence: list[tuple[str, bytes | None, bytes | None]] = []
    for n, control in enumerate(good):
        sequence.append((control.topic, control.key, control.value))
        if n < len(malformed):
            sequence.append((malformed[n].topic, malformed[n].key, malformed[n].value))
    router = routers(shop)
    _produce(broker, sequence)

    def all_dirty(messages: list[Message]) -> bool:
        return {(m.key() or b"").decode() for m in messages} >= expected_dirty

    dirty = _read(broker, shop.topics.dirty, all_dirty)
    _read(broker, shop.topics.dead_letter, lambda m: len(m) >= len(malformed))
    stats = router.stop()  # once stopped, all it produced is acknowledged: read it all
    dead = _read_to_end(broker, shop.topics.dead_letter)

    # Every good event was routed, and nothing else made anything dirty.
    assert {(m.key() or b"").decode() for m in dirty} == expected_dirty
    # Each malformed event has exactly one dead letter, found by its original bytes.
    by_bytes = Counter((m.key(), m.value()) for m in dead)
    assert len(dead) == len(malformed), [
        m.kind for m in malformed if (m.key, m.value) not in by_bytes
    ]
    problems = []
    for event in malformed:
        letters = [m for m in dead if (m.key(), m.value()) == (event.key, event.value)]
        if len(letters) != 1:
            problems.append(f"{event.kind}: {len(letters)} dead letters")
            continue
        headers = _headers(letters[0])
        if event.reason not in headers[HEADER_REASON]:
            problems.append(f"{event.kind}: reason {headers[HEADER_REASON]!r}")
        context = (headers[HEADER_KIND], headers[HEADER_STAGE], headers[HEADER_TOPIC])
        if context != ("event", "router", event.topic):
            problems.append(f"{event.kind}: {context}")
        if not headers[HEADER_ERROR_CLASS].startswith("consumer.router."):
            problems.append(f"{event.kind}: {headers[HEADER_ERROR_CLASS]}")
    assert problems == []
    assert (stats.events, stats.dead_lettered, stats.retries) == (len(sequence), len(malformed), 0)
    assert sum(stats.ignored.values()) == 0  # none of them passed for an ignorable event
    _assert_committed(broker, f"{prefix}.router", Counter(topic for topic, _, _ in sequence))


def _assert_committed(broker: str, group: str, produced: Counter[str]) -> None:
    """The router committed past every event of partition 0 of each topic: nothing stalls."""
    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed([TopicPartition(t, 0) for t in produced], timeout=10)
    finally:
        consumer.close()
    assert {tp.topic: tp.offset for tp in committed} == dict(produced)


def test_a_deeply_nested_event_is_dead_lettered_and_the_router_goes_on(
    shop: SyncDefinition,
    broker: str,
    prefix: str,
    routers: Callable[[SyncDefinition], _Router],
) -> None:
    poison = next(e for e in poison_events(prefix, MARKER) if e.kind == "value-deeply-nested")
    after = good_event(prefix, "customers", 77, with_schema=False)
    router = routers(shop)
    _produce(
        broker, [(poison.topic, poison.key, poison.value), (after.topic, after.key, after.value)]
    )
    deadline = time.monotonic() + READ_TIMEOUT_S
    dirty: list[Message] = []
    while router.alive() and not dirty and time.monotonic() < deadline:
        dirty = _read_to_end(broker, shop.topics.dirty)
        time.sleep(0.2)
    router.stop()  # raises what stopped the router
    assert [m.key() for m in dirty] == [b"customers/77"]
    letters = _read(broker, shop.topics.dead_letter, lambda m: len(m) >= 1)
    assert [(m.key(), m.value()) for m in letters] == [(poison.key, poison.value)]
    _check_reason(poison, letters[0])


def _check_reason(event: MalformedEvent, letter: Message) -> None:
    assert event.reason in _headers(letter)[HEADER_REASON]


# --- the bad rows -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """A sandbox with the shop's Reach schemas, and the shop's merchants as tenants."""
    config = with_shop_schemas(sandbox_config())
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), config) as server:
        yield server


def _ids(dsn: str, table: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [int(row[0]) for row in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


async def _sync_window(definition: SyncDefinition, entities: list[tuple[str, int]]) -> None:
    """One window of ``entities`` through the syncer's real WindowSink."""
    window = Window(opened_at=time.monotonic(), due_after_s=0.1)
    for offset, (resource, entity_id) in enumerate(entities):
        cause = Cause(kind="cdc", table=f"public.{resource}", op="c", offset=offset)
        window.add(DirtyKey(resource, entity_id, cause), offset, 0.1)
    db = SourceDatabase(definition.source.database)
    await db.open()
    redis = definition.redis
    last_sent = LastSentStore(redis.url.get_secret_value(), redis.key_prefix)
    producer = Producer(producer_settings(definition.source.kafka))
    try:
        async with ReachClient(definition.destination) as client:
            sink = WindowSink(
                definition,
                client=client,
                db=db,
                last_sent=last_sent,
                producer=producer,
                audit=AuditWriter(definition),
                gate=TenantBlocks(definition.destination.tenant_probe),
                stats=SyncerStats(),
            )
            try:
                await sink.process(window)
                await sink.flush()
            finally:
                sink.close()
    finally:
        await last_sent.close()
        await db.close()


async def test_bad_rows_end_as_record_dead_letters_and_differ_only_where_they_say(
    shop_sandbox: SandboxServer,
    broker: str,
    database: PostgresConfig,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    seed(database.dsn, customers=6, transactions=8, rng_seed=11)
    rows: list[BadRow] = create_bad_rows(database.dsn, MARKER)
    env = {
        "REACH_SYNC_BOOTSTRAP_SERVERS": broker,
        "REACH_SYNC_DATABASE_URL": database.dsn,
        "REACH_SYNC_REACH_URL": shop_sandbox.base_url,
        "REACH_SYNC_REDIS_URL": redis_url,
    }
    definition = _definition(tmp_path, prefix, env)
    ensure_topics(definition)
    ensure_audit_topic(definition)
    # Every entity of the shop, the bad ones among them, in one window.
    entities = [(r, i) for r in ("customers", "transactions") for i in _ids(database.dsn, r)]
    assert {(r.resource, int(r.entity_id)) for r in rows} <= set(entities)
    await _sync_window(definition, entities)

    letters = _read_to_end(broker, definition.topics.dead_letter)  # the sink flushed them
    by_key: dict[str, list[Message]] = {}
    for letter in letters:
        by_key.setdefault((letter.key() or b"").decode(), []).append(letter)
    assert sorted(by_key) == sorted(f"{r.resource}/{r.entity_id}" for r in rows)
    for row in rows:
        (letter,) = by_key[f"{row.resource}/{row.entity_id}"]
        headers = _headers(letter)
        assert headers[HEADER_KIND] == "record", (row.kind, headers)
        assert row.reason in headers[HEADER_REASON], (row.kind, headers[HEADER_REASON])
        assert row.reason in (letter.value() or b"").decode(), row.kind  # the JSON's reason

    # The sandbox equals the database but for the rows that say they differ.
    differences = await verify_sandbox(
        definition, shop_sandbox.base_url, shop_sandbox.admin_token, TENANTS
    )
    differing = {
        (d.resource, external_id)
        for d in differences
        for _, external_id in (*d.missing, *d.extra, *d.different)
    }
    assert differing == {(r.resource, r.entity_id) for r in rows if r.sandbox_differs}
    checked = {d.resource: d.checked for d in differences}
    assert checked["customers"] >= 6 and checked["transactions"] >= 8
