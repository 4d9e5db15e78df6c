"""Scheduled runs on the real broker, Redis, Postgres and the Reach sandbox
(consumer/schedule/scheduler.py): a run sends the keys written before it started, each entity
once however many keys it had, and commits them; a run with nothing new sends nothing; a run
another process holds is not started again; entities of a tenant Reach refuses go to the next
run.

The scheduler's clock is set by the test, and keys are produced with explicit timestamps, so
"written before the run started" is exact rather than a race."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from reach_devstack.postgres import PostgresConfig
from reach_sandbox.testing import PARTNER_ID, PARTNER_SECRET, SandboxServer, running_sandbox
from redis.asyncio import Redis

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.kafka import producer_settings
from consumer.reach.client import ReachClient
from consumer.records.audit import AuditWriter, ensure_audit_topic
from consumer.router.dirty import Cause, DirtyKey, dirty_message_key, encode_dirty
from consumer.router.topics import ensure_topics
from consumer.schedule.runs import RunRecord
from consumer.schedule.scheduler import Scheduler
from consumer.schedule.when import Schedule
from consumer.sink.dedup import LastSentStore
from consumer.sink.recompute import SourceDatabase
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink

DEFINITION = """
version: 1
source:
  kafka: {bootstrap_servers: "@BROKER@", group_id: "@PREFIX@", topics: ["@PREFIX@.unused"]}
  database: {dsn_env: DATABASE_URL}
resources:
  customers:
    reach_schema: customers
    key: id
    tenant: tenant
    triggers: [{table: public.customers, id: id}]
    query: "SELECT c.id, c.tenant, c.email FROM customers c WHERE c.id = ANY(%(ids)s)"
    mapping:
      customerId: {column: id, format: string}
      email: {column: email, pii: send}
    delivery: {mode: scheduled, every: 10s, max_keys: 7}
destination:
  base_url: "@REACH@"
  auth: {mode: jwt, partner_id: "@PARTNER@", secret_env: JWT_SECRET}
  tenant_probe: {interval_s: 0.1, max_interval_s: 0.1}
redis: {url_env: REDIS_URL, key_prefix: "@PREFIX@"}
topics:
  dirty: "@PREFIX@.dirty"
  dirty_partitions: 3
  dead_letter: "@PREFIX@.dead-letter"
"""

PERIOD_MS = 10_000


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


@dataclass
class Clock:
    now_s: float

    def __call__(self) -> float:
        return self.now_s


@dataclass
class Stack:
    definition: SyncDefinition
    redis: Redis
    db: PostgresConfig
    sandbox: SandboxServer
    tenant: str

    def insert(self, ids: range, tenant: str | None = None) -> None:
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            for n in ids:
                conn.execute(
                    "INSERT INTO customers VALUES (%s, %s, %s)",
                    (n, tenant or self.tenant, f"c{n}@example.com"),
                )

    def produce(self, ids: list[int], at_ms: int) -> None:
        """One dirty key per id, written at ``at_ms`` (the message timestamp)."""
        producer = Producer(producer_settings(self.definition.source.kafka))
        for n in ids:
            key = DirtyKey("customers", n, Cause(kind="cdc"), at_ms)
            producer.produce(
                self.definition.topics.scheduled,
                encode_dirty(key),
                dirty_message_key("customers", n),
                timestamp=at_ms,
            )
        assert producer.flush(30) == 0

    def versions(self, n: int, tenant: str | None = None) -> int:
        return len(self.sandbox.history(tenant or self.tenant, "customers", str(n)))

    async def tick(self, at_s: float, stop: threading.Event | None = None) -> RunRecord:
        """One pass of a fresh process's scheduler over the resource, its clock at ``at_s``."""
        db = SourceDatabase(self.definition.source.database)
        kafka = self.definition.source.kafka
        last_sent = LastSentStore(
            self.definition.redis.url.get_secret_value(), self.definition.redis.key_prefix
        )
        producer = Producer(producer_settings(kafka))
        await db.open()
        try:
            async with ReachClient(self.definition.destination) as client:
                sink = WindowSink(
                    self.definition,
                    client=client,
                    db=db,
                    last_sent=last_sent,
                    producer=producer,
                    audit=AuditWriter(self.definition),
                    gate=TenantBlocks(self.definition.destination.tenant_probe),
                    stats=SyncerStats(),
                )
                scheduler = Scheduler(
                    self.definition, sink, self.redis, producer, clock=Clock(at_s)
                )
                schedule = Schedule.of(self.definition.resources["customers"].delivery)
                await scheduler.tick("customers", schedule, stop or threading.Event())
                sink.close()
                return await scheduler.runs.read("customers")
        finally:
            await last_sent.close()
            await db.close()


@pytest.fixture
async def stack(
    tmp_path: Path,
    broker: str,
    database: PostgresConfig,
    redis_url: str,
    sandbox: SandboxServer,
    unique: Callable[[str], str],
) -> AsyncIterator[Stack]:
    prefix = unique("scheduled")
    text = DEFINITION
    for name, value in {
        "BROKER": broker,
        "PREFIX": prefix,
        "REACH": sandbox.base_url,
        "PARTNER": PARTNER_ID,
    }.items():
        text = text.replace(f"@{name}@", value)
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(text)
    env = {"DATABASE_URL": database.dsn, "JWT_SECRET": PARTNER_SECRET, "REDIS_URL": redis_url}
    definition = load_definition(path, env)
    ensure_topics(definition)
    ensure_audit_topic(definition)
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id bigint PRIMARY KEY, tenant text, email text)")
    redis: Redis = Redis.from_url(redis_url)
    try:
        yield Stack(definition, redis, database, sandbox, sandbox.new_tenant())
    finally:
        await redis.aclose()


def _tick_ms(at_s: float) -> int:
    return int(at_s * 1000) // PERIOD_MS * PERIOD_MS


async def test_a_run_sends_each_entity_once_for_the_keys_written_before_it_started(
    stack: Stack,
) -> None:
    stack.insert(range(1, 21))
    started_s = time.time()
    # Before the run: 20 entities, 3 keys each, coalesced into one recompute and send each
    # (windows of at most 7 entities). After it started: entities 1-5 again.
    stack.produce([n for n in range(1, 21) for _ in range(3)], int(started_s * 1000) - 5_000)
    stack.produce([1, 2, 3, 4, 5], int(started_s * 1000) + 1_000)

    first = await stack.tick(started_s)

    assert (first.last.keys, first.last.entities, first.last.sent) == (60, 20, 20)
    assert [stack.versions(n) for n in range(1, 21)] == [1] * 20
    assert first.served_tick_ms == _tick_ms(started_s)
    assert first.finished_ms is not None
    assert first.next_tick_ms == _tick_ms(started_s) + PERIOD_MS

    # The next tick takes the later keys alone: unchanged rows, so dedup skips them all.
    second = await stack.tick(started_s + PERIOD_MS / 1000)
    assert (second.last.keys, second.last.entities, second.last.sent) == (5, 5, 0)
    assert second.last.skipped == 5
    # Nothing new: the run reads nothing and sends nothing.
    third = await stack.tick(started_s + 2 * PERIOD_MS / 1000)
    assert (third.last.keys, third.last.entities, third.last.sent) == (0, 0, 0)
    assert third.served_tick_ms == _tick_ms(started_s) + 2 * PERIOD_MS
    assert [stack.versions(n) for n in range(1, 21)] == [1] * 20


async def test_a_tick_already_served_or_held_by_another_process_is_not_run_again(
    stack: Stack,
) -> None:
    stack.insert(range(1, 4))
    now_s = time.time()
    stack.produce([1, 2, 3], int(now_s * 1000) - 1_000)
    # Another process holds the run's lock: this one does not run it.
    lock_key = f"{stack.definition.redis.key_prefix}:scheduled-lock:customers"
    await stack.redis.set(lock_key, "another-process", px=60_000)
    waiting = await stack.tick(now_s)
    assert waiting.started_ms is None and waiting.served_tick_ms is None
    assert [stack.versions(n) for n in (1, 2, 3)] == [0, 0, 0]
    # Released (or expired): the tick runs once.
    await stack.redis.delete(lock_key)
    done = await stack.tick(now_s)
    assert done.last.sent == 3 and done.served_tick_ms == _tick_ms(now_s)
    # The same tick again (another process that looked before the run finished): nothing.
    stack.produce([1], int(now_s * 1000) - 500)
    # Later, but still within the same period (a fixed +1 s crosses into the next one when
    # the test starts in a period's last second).
    left_s = (_tick_ms(now_s) + PERIOD_MS) / 1000 - now_s
    again = await stack.tick(now_s + min(1.0, left_s / 2))
    assert again.started_ms == done.started_ms and again.last == done.last
    assert [stack.versions(n) for n in (1, 2, 3)] == [1, 1, 1]


async def test_entities_of_a_refused_tenant_are_sent_at_the_next_run(stack: Stack) -> None:
    refused = stack.sandbox.new_tenant()
    stack.insert(range(1, 6))
    stack.insert(range(100, 104), tenant=refused)
    now_s = time.time()
    stack.produce([1, 2, 3, 4, 5, 100, 101, 102, 103], int(now_s * 1000) - 1_000)
    fault = stack.sandbox.add_fault(
        kind="error", status=403, tenant=refused, path_prefix="/api/", message="access revoked"
    )
    first = await stack.tick(now_s)
    assert (first.last.sent, first.last.held) == (5, 4)
    assert [stack.versions(n, refused) for n in range(100, 104)] == [0] * 4

    stack.sandbox.remove_fault(fault)
    # Held entities were written back after the first run started: the next tick has them.
    second = await stack.tick(time.time() + PERIOD_MS / 1000)
    assert (second.last.keys, second.last.sent, second.last.held) == (4, 4, 0)
    assert [stack.versions(n, refused) for n in range(100, 104)] == [1] * 4
    assert [stack.versions(n) for n in range(1, 6)] == [1] * 5


async def test_a_run_stopped_before_it_finished_leaves_its_tick_to_the_next_process(
    stack: Stack,
) -> None:
    stack.insert(range(1, 3))
    now_s = time.time()
    stack.produce([1, 2], int(now_s * 1000) - 1_000)
    stopped = threading.Event()
    stopped.set()
    record = await stack.tick(now_s, stopped)
    assert record.started_ms is not None and record.served_tick_ms is None
    assert [stack.versions(n) for n in (1, 2)] == [0, 0]
    resumed = await stack.tick(now_s)
    assert resumed.last.sent == 2 and resumed.served_tick_ms == _tick_ms(now_s)
