"""run_backfill on the real broker, Postgres and Redis, with no syncer running
(consumer/backfill/run.py): every id in scope becomes exactly one dirty key carrying the run,
the checkpoint follows each acknowledged page, a stopped backfill resumes where it stopped and a
finished one writes nothing; the walk waits while the syncer group's lag is over ``max_lag``,
and the outcomes wait until the group committed past every key written.

The syncer is played by committing the syncer group's offsets by hand; the audit and dead-letter
records its work would leave are produced by hand."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from reach_devstack.postgres import PostgresConfig
from redis.asyncio import Redis

from consumer.backfill.checkpoint import CheckpointStore, ResourceState
from consumer.backfill.emit import DirtyWriter
from consumer.backfill.fingerprint import Change, FingerprintStore, parts_of
from consumer.backfill.outcomes import Outcomes
from consumer.backfill.resync import Resyncer
from consumer.backfill.run import BackfillOptions, BackfillReport, BeforePage, Parts, run_backfill
from consumer.backfill.scope import BackfillScope
from consumer.backfill.syncer_position import SyncerPosition, syncer_group
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import ConfigurationError
from consumer.records.audit import AuditRecord, Outcome, audit_key, encode_audit
from consumer.records.deadletter import dead_letter_message, dead_letter_record
from consumer.router.dirty import Cause, DirtyKey, EntityId, decode_dirty, dirty_message_key
from consumer.router.topics import ensure_topics
from consumer.sink.dedup import LastSent, LastSentStore

DEFINITION = """
version: 1
source:
  kafka: {bootstrap_servers: "@BROKER@", group_id: "@PREFIX@", topics: ["@PREFIX@.unused"]}
  database: {dsn_env: DATABASE_URL}
resources:
  items:
    reach_schema: items
    key: id
    tenant: tenant
    triggers: [{table: public.items, id: id}]
    query: "SELECT i.id, i.tenant, i.flag FROM items i WHERE i.id = ANY(%(ids)s)"
    mapping: {itemId: {column: id, format: string}}
    delivery: {mode: batch}
  codes:
    reach_schema: codes
    key: code
    tenant: tenant
    triggers: [{table: public.codes, id: code}]
    query: "SELECT c.code, c.tenant FROM codes c WHERE c.code = ANY(%(ids)s)"
    mapping: {code: {column: code}}
    delivery: {mode: batch}
destination:
  base_url: "http://127.0.0.1:1"
  auth: {mode: jwt, partner_id: p, secret_env: JWT_SECRET}
redis: {url_env: REDIS_URL, key_prefix: "@PREFIX@"}
topics:
  dirty: "@PREFIX@.dirty"
  dirty_partitions: @PARTITIONS@
  dead_letter: "@PREFIX@.dead-letter"
  audit: "@PREFIX@.audit"
"""

ITEMS = {i * 3 + 1: "acme" if i % 4 else "globex" for i in range(25)}  # id -> tenant
CODES = [f"code-{n:02d}" for n in range(14)]
PAGE = 10
NO_LAG_LIMIT = 1_000_000_000
READ_TIMEOUT_S = 30.0
# Read on this long after the expected keys arrived, to see that no more come.
QUIET_S = 1.0


@dataclass
class Stack:
    """One test's definition on its own topics, group, database and Redis prefix, and the
    parts a backfill works with."""

    definition: SyncDefinition
    broker: str
    redis: Redis
    writer: DirtyWriter
    position: SyncerPosition

    def parts(self, before_page: BeforePage | None = None) -> Parts:
        return Parts(self.checkpoints, self.writer, self.position, before_page)

    @property
    def checkpoints(self) -> CheckpointStore:
        return CheckpointStore(self.redis, self.definition.redis.key_prefix)

    def scope(self, *resources: str, **filters: Any) -> BackfillScope:
        return BackfillScope.of(self.definition, "backfill", resources, **filters)

    async def backfill(
        self,
        scope: BackfillScope,
        options: BackfillOptions | None = None,
        stop: threading.Event | None = None,
        **more: Any,
    ) -> BackfillReport:
        return await run_backfill(
            self.definition,
            scope,
            more.pop("parts", None) or self.parts(),
            options or BackfillOptions(page_size=PAGE, max_lag=NO_LAG_LIMIT, wait=False),
            stop or threading.Event(),
            **more,
        )


@pytest.fixture
def source(database: PostgresConfig) -> PostgresConfig:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, tenant text, flag boolean)")
        conn.execute("CREATE TABLE codes (code text PRIMARY KEY, tenant text)")
        for item, tenant in sorted(ITEMS.items(), reverse=True):
            conn.execute("INSERT INTO items VALUES (%s, %s, %s)", (item, tenant, item % 2 == 0))
        for code in CODES:
            conn.execute("INSERT INTO codes VALUES (%s, 'acme')", (code,))
    return database


@pytest.fixture
async def make_stack(
    tmp_path: Path,
    broker: str,
    source: PostgresConfig,
    redis_url: str,
    unique: Callable[[str], str],
) -> AsyncIterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(partitions: int = 4, topics: bool = True) -> Stack:
        prefix = unique("backfill-run")
        text = DEFINITION
        for name, value in {
            "BROKER": broker,
            "PREFIX": prefix,
            "PARTITIONS": str(partitions),
        }.items():
            text = text.replace(f"@{name}@", value)
        path = tmp_path / f"{prefix}.yaml"
        path.write_text(text)
        env = {"DATABASE_URL": source.dsn, "JWT_SECRET": "unused", "REDIS_URL": redis_url}
        definition = load_definition(path, env)
        if topics:
            ensure_topics(definition)
        redis: Redis = Redis.from_url(redis_url)
        stack = Stack(
            definition, broker, redis, DirtyWriter(definition), SyncerPosition(definition)
        )
        made.append(stack)
        return stack

    yield make
    for stack in made:
        await asyncio.to_thread(stack.writer.close)
        stack.position.close()
        await stack.redis.aclose()


@dataclass
class Watch:
    """An Observer that records every call and, with ``stop_at``, sets ``stop`` on that call of
    ``walking`` (call n is made before the walk's page n)."""

    stop: threading.Event = field(default_factory=threading.Event)
    stop_at: int | None = None
    walks: list[tuple[str, int, int, int]] = field(default_factory=list)
    lags: list[tuple[int, bool]] = field(default_factory=list)
    waits: list[tuple[int, int]] = field(default_factory=list)

    def walking(self, resource: str, walked: int, total: int, keys: int) -> None:
        self.walks.append((resource, walked, total, keys))
        if len(self.walks) == self.stop_at:
            self.stop.set()

    def lag(self, keys: int, waiting: bool) -> None:
        self.lags.append((keys, waiting))

    def awaiting(self, partitions_behind: int, partitions: int) -> None:
        self.waits.append((partitions_behind, partitions))


def _read(broker: str, topic: str, expected: int) -> list[tuple[bytes, DirtyKey]]:
    """Every dirty key of ``topic``: read until ``expected`` arrived, then QUIET_S more."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "backfill-tests-reader",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list[tuple[bytes, DirtyKey]] = []
        deadline, quiet_until = time.monotonic() + READ_TIMEOUT_S, None
        while time.monotonic() < (quiet_until or deadline):
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    found.append((message.key() or b"", decode_dirty(message.value() or b"")))
            if quiet_until is None and len(found) >= expected:
                quiet_until = time.monotonic() + QUIET_S
        return found
    finally:
        consumer.close()


def _commit(stack: Stack, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` of the dirty topic for the syncer's group, as the syncer would."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.broker,
            "group.id": syncer_group(stack.definition),
            "enable.auto.commit": False,
        }
    )
    try:
        topic = stack.definition.topics.dirty
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


async def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _entities(keys: Sequence[tuple[bytes, DirtyKey]]) -> Counter[tuple[str, EntityId]]:
    return Counter((key.resource, key.id) for _, key in keys)


# --- one backfill ---------------------------------------------------------------------------------


async def test_every_id_in_scope_becomes_exactly_one_dirty_key_with_the_run(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(4)
    report = await stack.backfill(stack.scope())

    expected = {("items", i) for i in ITEMS} | {("codes", c) for c in CODES}
    assert (report.written, report.stopped, report.already_complete) == (39, False, False)
    assert report.outcomes is None  # wait=False
    keys = _read(stack.broker, stack.definition.topics.dirty, len(expected))
    assert _entities(keys) == Counter(expected)  # each once, nothing else
    for message_key, key in keys:
        assert key.cause == Cause(kind="backfill", run=report.run)
        assert message_key == dirty_message_key(key.resource, key.id)
        assert type(key.id) is (int if key.resource == "items" else str)
    # What the checkpoint says was written is what the broker holds.
    assert sum(report.checkpoint.offsets.values()) == len(expected)
    assert len(report.checkpoint.offsets) > 1  # keys spread over the dirty partitions

    saved = await stack.checkpoints.load(report.scope.id)
    assert saved == report.checkpoint
    assert saved is not None and saved.completed_ms is not None
    assert saved.runs == [report.run]
    assert saved.resources == {
        "items": ResourceState(after=None, done=True, keys=len(ITEMS)),
        "codes": ResourceState(after=None, done=True, keys=len(CODES)),
    }


async def test_a_filtered_backfill_makes_only_the_ids_in_scope_dirty(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(4)
    report = await stack.backfill(stack.scope("items", tenants=("globex",), where="q.id > 20"))
    expected = {("items", i) for i, tenant in ITEMS.items() if tenant == "globex" and i > 20}
    assert 0 < len(expected) < len(ITEMS)
    assert report.written == len(expected)
    assert _entities(_read(stack.broker, stack.definition.topics.dirty, len(expected))) == Counter(
        expected
    )


async def test_a_first_backfill_creates_the_dirty_topic_with_its_partitions(
    make_stack: Callable[..., Stack],
) -> None:
    """Before ``run`` ever ran: the dirty topic must not be auto-created with the broker's
    defaults, or the syncer's partitioning would differ from the definition's."""
    stack = make_stack(6, topics=False)
    report = await stack.backfill(stack.scope("codes"))
    assert report.written == len(CODES)
    dirty = stack.definition.topics.dirty
    admin = AdminClient({"bootstrap.servers": stack.broker})
    assert len(admin.list_topics(dirty, timeout=10).topics[dirty].partitions) == 6
    assert len(_read(stack.broker, dirty, len(CODES))) == len(CODES)


async def test_the_checkpoint_is_saved_after_each_page(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(4)
    scope = stack.scope("items")
    seen: list[tuple[list[EntityId], ResourceState | None]] = []

    async def before_page(resource: str, ids: Sequence[EntityId]) -> None:
        # What another process would find now, before this page is written.
        saved = await stack.checkpoints.load(scope.id)
        assert saved is not None
        seen.append((list(ids), saved.resources.get(resource)))

    await stack.backfill(scope, parts=stack.parts(before_page))

    ordered = sorted(ITEMS)
    assert [ids for ids, _ in seen] == [ordered[:10], ordered[10:20], ordered[20:]]
    assert [state for _, state in seen] == [
        None,
        ResourceState(after=ordered[9], done=False, keys=10),
        ResourceState(after=ordered[19], done=False, keys=20),
    ]


async def test_a_broken_where_fails_before_any_key_or_checkpoint(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(1)
    scope = stack.scope(where="q.nope = 1")
    with pytest.raises(ConfigurationError, match="--where"):
        await stack.backfill(scope)
    assert await stack.checkpoints.load(scope.id) is None
    assert _read(stack.broker, stack.definition.topics.dirty, 0) == []


# --- stopping, resuming, finishing ----------------------------------------------------------------


async def test_a_stopped_backfill_resumes_from_its_checkpoint(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(4)
    scope = stack.scope("items")
    watch = Watch(stop_at=2)  # stop once the first page is written
    first = await stack.backfill(scope, stop=watch.stop, observer=watch)

    ordered = sorted(ITEMS)
    assert (first.stopped, first.written) == (True, PAGE)
    saved = await stack.checkpoints.load(scope.id)
    assert saved is not None and saved.completed_ms is None
    assert saved.resources["items"] == ResourceState(after=ordered[PAGE - 1], done=False, keys=PAGE)

    second = await stack.backfill(scope)
    assert (second.stopped, second.already_complete) == (False, False)
    assert second.run != first.run
    assert PAGE <= len(ITEMS) - second.written <= 2 * PAGE  # the rest, plus one page at most
    assert second.checkpoint.runs == [first.run, second.run]
    assert second.checkpoint.completed_ms is not None

    keys = _read(stack.broker, stack.definition.topics.dirty, first.written + second.written)
    by_run = {
        run: {key.id for _, key in keys if key.cause.run == run} for run in (first.run, second.run)
    }
    assert by_run[first.run] == set(ordered[:PAGE])
    assert by_run[second.run] >= set(ordered[PAGE:])
    assert by_run[first.run] | by_run[second.run] == set(ITEMS)
    assert len(keys) == first.written + second.written


async def test_a_stop_between_resources_leaves_the_next_one_unwalked(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(4)
    scope = stack.scope()
    watch = Watch(stop_at=4)  # items' pages 1-3 written; the 4th call is items' end
    first = await stack.backfill(scope, stop=watch.stop, observer=watch)
    assert first.stopped and first.written == len(ITEMS)
    assert first.checkpoint.resources["items"].done
    assert "codes" not in first.checkpoint.resources

    second = await stack.backfill(scope)
    assert second.written == len(CODES)
    keys = _read(stack.broker, stack.definition.topics.dirty, len(ITEMS) + len(CODES))
    assert sorted(_entities(keys).values()) == [1] * (len(ITEMS) + len(CODES))


async def test_a_completed_backfill_is_already_complete_and_writes_nothing(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(4)
    scope = stack.scope("codes")
    done = await stack.backfill(scope)
    again = await stack.backfill(scope)

    assert again.already_complete and not again.stopped
    assert again.written == 0
    assert again.checkpoint.offsets == done.checkpoint.offsets
    assert again.checkpoint.completed_ms == done.checkpoint.completed_ms
    keys = _read(stack.broker, stack.definition.topics.dirty, len(CODES))
    assert len(keys) == len(CODES)
    assert {key.cause.run for _, key in keys} == {done.run}


async def test_restart_walks_a_completed_backfill_again(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(4)
    scope = stack.scope("codes")
    done = await stack.backfill(scope)
    options = BackfillOptions(page_size=PAGE, max_lag=NO_LAG_LIMIT, wait=False, restart=True)
    again = await stack.backfill(scope, options)

    assert not again.already_complete and again.written == len(CODES)
    assert again.checkpoint.runs == [again.run]
    keys = _read(stack.broker, stack.definition.topics.dirty, 2 * len(CODES))
    assert Counter(key.cause.run for _, key in keys) == {done.run: 14, again.run: 14}


# --- pacing and outcomes: the syncer's group ----------------------------------------------------


async def test_the_walk_waits_while_the_syncer_lag_is_over_max_lag(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(1)
    # Keys no syncer consumes, one acknowledged write at a time: on the local broker the high
    # watermark leaves out a partition's last batch, so the lag seen is 39 or 40.
    backlog: dict[int, int] = {}
    for n in range(40):
        backlog = await stack.writer.write("filler", [n], Cause(kind="cdc"))
    assert backlog == {0: 40}
    assert await stack.position.lag() >= 39

    scope = stack.scope("items")
    watch = Watch()
    options = BackfillOptions(page_size=PAGE, max_lag=30, wait=False)
    walk = asyncio.create_task(stack.backfill(scope, options, stop=watch.stop, observer=watch))
    try:
        await _until(lambda: any(waiting for _, waiting in watch.lags))
        await asyncio.sleep(1.5)  # three of the walk's looks at the lag
        assert not walk.done()
        assert all(waiting for _, waiting in watch.lags)
        saved = await stack.checkpoints.load(scope.id)
        assert saved is not None and saved.state("items").keys == 0 and saved.offsets == {}

        await asyncio.to_thread(_commit, stack, backlog)  # the syncer caught up
        report = await asyncio.wait_for(walk, 30)
    finally:
        watch.stop.set()
        await asyncio.gather(walk, return_exceptions=True)

    assert (report.written, report.stopped) == (len(ITEMS), False)
    assert watch.lags[0][0] >= 39 and watch.lags[0][1]  # the backlog held the first page back
    assert not watch.lags[-1][1]


async def test_behind_is_zero_only_once_the_syncer_committed_past_the_written_keys(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(4)
    report = await stack.backfill(stack.scope())
    written = report.checkpoint.offsets
    assert len(written) >= 2
    assert await stack.position.behind(written) == len(written)  # nothing committed
    assert await stack.position.behind({}) == 0

    first, *rest = sorted(written)
    await asyncio.to_thread(_commit, stack, {p: written[p] for p in rest})
    assert await stack.position.behind(written) == 1
    await asyncio.to_thread(_commit, stack, {first: written[first] - 1})  # one key short
    assert await stack.position.behind(written) == 1
    await asyncio.to_thread(_commit, stack, {first: written[first]})
    assert await stack.position.behind(written) == 0
    assert await stack.position.lag() == 0


async def test_waiting_backfill_counts_its_outcomes_once_the_syncer_committed_its_keys(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(2)
    admin = AdminClient({"bootstrap.servers": stack.broker})
    for future in admin.create_topics([NewTopic(stack.definition.topics.audit, 1, 1)]).values():
        future.result(timeout=10)
    scope = stack.scope("items")
    run = "run-outcomes"
    watch = Watch()
    options = BackfillOptions(page_size=PAGE, max_lag=NO_LAG_LIMIT, wait=True)
    task = asyncio.create_task(
        stack.backfill(scope, options, stop=watch.stop, observer=watch, run=run)
    )
    try:
        await _until(lambda: bool(watch.waits))  # every key written; outcomes awaited
        await asyncio.sleep(1.0)
        assert not task.done()
        assert watch.waits[-1][0] == watch.waits[-1][1] > 0

        ours, other = Cause(kind="backfill", run=run), Cause(kind="cdc")
        a, b, c, d, e, f = sorted(ITEMS)[:6]
        _produce_outcomes(
            stack,
            audit=[
                _audit("upsert", a, (other, ours), "sending"),
                _audit("upsert", a, (other, ours)),
                _audit("upsert", a, (ours,)),  # sent twice: one outcome
                _audit("upsert", b, (ours,), "sending"),
                _audit("upsert", b, (ours,)),
                _audit("delete", c, (ours,), "sending"),
                _audit("delete", c, (ours,)),
                _audit("upsert", d, (ours,), "sending"),  # announced, then refused: dead
                _audit("upsert", e, (other,)),  # not this backfill's
                _audit("upsert", f, (ours,), "sending"),  # announced only: not an outcome
            ],
            dead=[(d, ours)],
        )
        saved = await stack.checkpoints.load(scope.id)
        assert saved is not None
        await asyncio.to_thread(_commit, stack, saved.offsets)
        report = await asyncio.wait_for(task, 60)
    finally:
        watch.stop.set()
        await asyncio.gather(task, return_exceptions=True)

    assert not report.stopped
    assert report.outcomes == Outcomes(keys=len(ITEMS), sent=2, deleted=1, dead_lettered=1)
    assert report.outcomes.skipped == len(ITEMS) - 4


async def test_a_stop_while_awaiting_outcomes_reports_stopped(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(1)
    watch = Watch()
    options = BackfillOptions(page_size=PAGE, max_lag=NO_LAG_LIMIT, wait=True)
    task = asyncio.create_task(
        stack.backfill(stack.scope("codes"), options, stop=watch.stop, observer=watch)
    )
    await _until(lambda: bool(watch.waits))
    watch.stop.set()
    report = await asyncio.wait_for(task, 10)
    assert report.stopped and report.outcomes is None
    assert report.checkpoint.completed_ms is not None  # every key was written
    # Run again: complete already, it only waits for the outcomes.
    watch = Watch()
    task = asyncio.create_task(
        stack.backfill(stack.scope("codes"), options, stop=watch.stop, observer=watch)
    )
    try:
        await _until(lambda: bool(watch.waits))
        await asyncio.to_thread(_commit, stack, report.checkpoint.offsets)
        again = await asyncio.wait_for(task, 60)
    finally:
        watch.stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert again.already_complete and again.written == 0
    assert again.outcomes == Outcomes(keys=len(CODES), sent=0, deleted=0, dead_lettered=0)


def _audit(
    kind: Literal["upsert", "delete"],
    entity: int,
    causes: tuple[Cause, ...],
    outcome: Outcome | None = None,
) -> AuditRecord:
    return AuditRecord(
        kind=kind,
        tenant=ITEMS[entity],
        resource="items",
        reach_schema="items",
        id=str(entity),
        destination="127.0.0.1",
        at_ms=1,
        payload_sha256=None,
        fields=(),
        values={},
        causes=causes,
        mode="batch",
        batch_id=None,
        outcome=outcome or ("deleted" if kind == "delete" else "accepted"),
    )


def _produce_outcomes(
    stack: Stack, audit: list[AuditRecord], dead: list[tuple[int, Cause]]
) -> None:
    """The records, then one more batch on each topic: the local broker's high watermark leaves
    out a partition's last batch (docs/local-stack.md), and the counts read to the watermark."""
    topics = stack.definition.topics
    producer = Producer({"bootstrap.servers": stack.broker})
    for record in audit:
        producer.produce(topics.audit, encode_audit(record), audit_key("items", record.id))
    for entity, cause in dead:
        letter = dead_letter_record(
            resource="items",
            entity_id=entity,
            tenant=ITEMS[entity],
            cause=cause,
            error=ValueError("rejected"),
            attempts=1,
            first_attempt_ms=1,
            last_attempt_ms=1,
        )
        message = dead_letter_message(letter)
        producer.produce(topics.dead_letter, message.value, message.key, partition=0)
    assert producer.flush(30) == 0
    for topic in (topics.audit, topics.dead_letter):
        for partition in range(_partitions(stack, topic)):
            producer.produce(topic, b"not a record", b"filler", partition=partition)
    assert producer.flush(30) == 0


def _partitions(stack: Stack, topic: str) -> int:
    admin = AdminClient({"bootstrap.servers": stack.broker})
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


# --- resync --------------------------------------------------------------------------------------


async def _resync(stack: Stack, parts: tuple[str, ...]) -> BackfillReport | None:
    definition = stack.definition
    last_sent = LastSentStore(definition.redis.url.get_secret_value(), definition.redis.key_prefix)
    try:
        resyncer = Resyncer(definition, stack.redis, last_sent, stack.writer, stack.position)
        change = Change("items", parts, parts_of(definition.resources["items"]))
        options = BackfillOptions(page_size=PAGE, max_lag=NO_LAG_LIMIT, wait=False)
        return await resyncer.resync(change, threading.Event(), options)
    finally:
        await last_sent.close()


async def _last_sent(stack: Stack) -> dict[str, LastSent] | None:
    definition = stack.definition
    store = LastSentStore(definition.redis.url.get_secret_value(), definition.redis.key_prefix)
    try:
        return await store.get_many("items", sorted(ITEMS))
    finally:
        await store.close()


async def _remember_all_sent(stack: Stack) -> None:
    definition = stack.definition
    store = LastSentStore(definition.redis.url.get_secret_value(), definition.redis.key_prefix)
    try:
        await store.record_sent(
            "items", [(i, LastSent(tenant, f"hash-{i}")) for i, tenant in ITEMS.items()]
        )
    finally:
        await store.close()


async def test_a_resync_to_a_new_reach_schema_puts_every_entity_in_doubt_so_it_is_sent_again(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    await _remember_all_sent(stack)

    report = await _resync(stack, ("reach_schema",))

    assert report is not None and report.checkpoint.keys == len(ITEMS)
    held = await _last_sent(stack)
    assert held is not None
    # Every hash emptied, every tenant kept (a delete still needs it).
    assert {i: (e.tenant, e.hash) for i, e in held.items()} == {
        str(i): (tenant, "") for i, tenant in ITEMS.items()
    }
    stored = await FingerprintStore(stack.redis, stack.definition.redis.key_prefix).held(["items"])
    assert stored["items"] == parts_of(stack.definition.resources["items"])


async def test_a_resync_of_a_new_mapping_keeps_the_last_sent_hashes_for_dedup(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    await _remember_all_sent(stack)

    report = await _resync(stack, ("mapping",))

    assert report is not None and report.checkpoint.keys == len(ITEMS)
    held = await _last_sent(stack)
    assert held is not None and {e.hash for e in held.values()} == {f"hash-{i}" for i in ITEMS}


async def test_a_resync_another_process_holds_is_left_to_it(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack()
    prefix = stack.definition.redis.key_prefix
    await stack.redis.set(f"{prefix}:resync-lock:items", "someone-else", px=60_000)

    assert await _resync(stack, ("mapping",)) is None
    assert await stack.checkpoints.load(BackfillScope.of(stack.definition, "backfill").id) is None
    # The other holder's lock is not released by the process that did not take it.
    assert await stack.redis.get(f"{prefix}:resync-lock:items") == b"someone-else"
