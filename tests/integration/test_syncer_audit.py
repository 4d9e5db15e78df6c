"""The syncer audits what Reach took before the last-sent store remembers it, on the real sandbox
and Redis: a window whose audit flush fails remembers nothing in Redis, commits nothing and is
retried; its retry sends again, audits with the window's causes and Reach's batch id, and only
then remembers and commits. Delivery itself reports single writes without a batch id, and forgets
a deleted entity only after its delete was reported.

The audit writer is the real ``AuditWriter`` over a producer that acknowledges, or fails, on
``flush`` (and looks into Redis at that moment); the source database and the consumer are fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import redis
from confluent_kafka import KafkaError, TopicPartition
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxServer,
    running_sandbox,
)

from consumer.config import Resource, SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import Retryable
from consumer.reach.client import ReachClient
from consumer.records.audit import AuditRecord, AuditWriter, decode_audit
from consumer.router.dirty import Cause, DirtyKey, EntityId
from consumer.sink.dedup import LastSent, LastSentStore
from consumer.sink.delivery import deliver_resource
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.recompute import Recomputed
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.loop import Syncer
from consumer.syncer.partitions import Partition
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window

DEFINITION = """
version: 1
source:
  kafka: {bootstrap_servers: "127.0.0.1:1", group_id: audit-order, topics: [unused]}
  database: {dsn_env: DATABASE_URL}
resources:
  customers:
    reach_schema: customers
    key: id
    tenant: tenant
    triggers: [{table: public.customers, id: id}]
    query: "SELECT id, tenant, email FROM customers WHERE id = ANY(%(ids)s)"
    mapping:
      customerId: {column: id, format: string}
      email: {column: email, pii: send}
    delivery: {mode: "@MODE@", window_ms: 100}
destination:
  base_url: "@BASE_URL@"
  auth: {mode: jwt, partner_id: "@PARTNER@", secret_env: JWT_SECRET}
redis: {url_env: REDIS_URL, key_prefix: "@PREFIX@"}
topics: {dirty: t.dirty, dirty_partitions: 1, dead_letter: t.dead-letter, audit: t.audit}
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def _definition(
    tmp_path: Path, sandbox: SandboxServer, redis_url: str, prefix: str, mode: str
) -> SyncDefinition:
    text = DEFINITION
    for name, value in {
        "MODE": mode,
        "BASE_URL": sandbox.base_url,
        "PARTNER": PARTNER_ID,
        "PREFIX": prefix,
    }.items():
        text = text.replace(f"@{name}@", value)
    path = tmp_path / "definition.yaml"
    path.write_text(text)
    env = {
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "JWT_SECRET": PARTNER_SECRET,
        "REDIS_URL": redis_url,
    }
    return load_definition(path, env)


class _Producer:
    """What AuditWriter needs of a confluent-kafka Producer: each ``flush`` first calls
    ``on_flush`` (to look at Redis then), then acknowledges every queued record, or fails each
    (a delivery error), as ``acknowledge`` says, unless ``refuse`` names that flush (1 is the
    first)."""

    def __init__(self, on_flush: Callable[[], None]) -> None:
        self.acknowledge = False
        self.refuse: set[int] = set()
        self.flushes = 0
        self.acknowledged: list[bytes] = []
        self._on_flush = on_flush
        self._queued: list[tuple[bytes, Callable[[KafkaError | None, Any], None]]] = []

    def produce(self, topic: str, *, value: bytes, on_delivery: Any, **_: Any) -> None:
        self._queued.append((value, on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        self._on_flush()
        queued, self._queued = self._queued, []
        for value, on_delivery in queued:
            if self.acknowledge and self.flushes not in self.refuse:
                self.acknowledged.append(value)
                on_delivery(None, None)
            else:
                on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
        return 0


class _DeadLetters:
    """The syncer's dead-letter producer: nothing to acknowledge in these windows."""

    def flush(self, timeout: float) -> int:
        return 0


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[list[TopicPartition]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(offsets)


class _Database:
    """The source database: each customer's row, and no tenants to delete from."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows

    async def recompute(self, resource: Resource, ids: Sequence[EntityId]) -> Recomputed:
        found = {str(i): self.rows[str(i)] for i in ids if str(i) in self.rows}
        return Recomputed(rows=found, gone=[i for i in ids if str(i) not in found])

    async def tenants(self, resource: Resource) -> list[str]:
        return []


def _cause(offset: int) -> Cause:
    return Cause(kind="cdc", table="public.customers", op="u", topic="shop", offset=offset)


def _keys(redis_url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


async def test_a_window_whose_audit_fails_remembers_nothing_and_is_retried(
    sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = unique("audit-order")
    definition = _definition(tmp_path, sandbox, redis_url, prefix, "batch")
    tenant = sandbox.new_tenant()
    rows = {str(n): {"id": n, "tenant": tenant, "email": f"c{n}@example.com"} for n in (1, 2)}
    redis_at_flush: list[list[str]] = []
    producer = _Producer(lambda: redis_at_flush.append(_keys(redis_url, prefix)))
    writer = AuditWriter(definition, producer=producer)  # type: ignore[arg-type]
    consumer = _Consumer()
    last_sent = LastSentStore(redis_url, prefix)
    window = Window(opened_at=time.monotonic(), due_after_s=0.1)
    for offset, n in ((10, 1), (11, 2), (12, 1)):  # customer 1 twice: two causes
        window.add(DirtyKey("customers", n, _cause(offset)), offset, 0.1)
    part = Partition("t.dirty", 0)
    try:
        async with ReachClient(definition.destination) as client:
            blocks = TenantBlocks(definition.destination.tenant_probe)
            sink = WindowSink(
                definition,
                client=client,
                db=_Database(rows),  # type: ignore[arg-type]
                last_sent=last_sent,
                producer=_DeadLetters(),  # type: ignore[arg-type]
                audit=writer,
                gate=blocks,
                stats=SyncerStats(),
            )
            syncer = Syncer(
                definition, sink, blocks, stats=sink.stats, consumer_factory=lambda _: consumer
            )

            # The sending records are acknowledged (flush 1) and Reach accepts both; their
            # outcome records are not (flush 2): nothing remembered, not committed.
            producer.acknowledge, producer.refuse = True, {2}
            await syncer.run_window(part, window)
            syncer.commit_pending(syncer.take_commits())  # as the poll thread does
            assert part.failed is window and syncer.stats.retries == 1
            assert (consumer.commits, _keys(redis_url, prefix)) == ([], [])
            assert (syncer.stats.sent, syncer.stats.audited, writer.pending) == (0, 0, 2)
            assert syncer.stats.announced == 2
            for n in (1, 2):
                assert len(sandbox.history(tenant, "customers", str(n))) == 1

            # The retry announces and sends again, and remembers only once the audit was
            # acknowledged.
            part.failed = None
            await syncer.run_window(part, window)
            syncer.commit_pending(syncer.take_commits())
            assert part.failed is None
            assert [[(tp.partition, tp.offset) for tp in c] for c in consumer.commits] == [
                [(0, 13)]
            ]
    finally:
        syncer.sink.close()
        await last_sent.close()

    # Every flush (two per attempt: ahead of the request, after its outcome) happened before
    # anything was remembered.
    assert redis_at_flush == [[], [], [], []]
    assert _keys(redis_url, prefix) == [f"{prefix}:last:customers:{n}" for n in (1, 2)]
    assert (syncer.stats.sent, syncer.stats.audited, syncer.stats.announced) == (2, 2, 4)
    for n in (1, 2):
        assert len(sandbox.history(tenant, "customers", str(n))) == 2  # sent twice
    records = [decode_audit(v) for v in producer.acknowledged]
    # Flush 1: the first attempt's sending records; flush 3: the retry's, and the failed outcome
    # records produced again by the writer; flush 4: the outcome records of the re-send.
    assert [(r.outcome, r.id) for r in records] == [
        *[("sending", "1"), ("sending", "2")] * 2,
        *[("accepted", "1"), ("accepted", "2")] * 2,
    ]
    ahead, outcomes = records[:4], records[4:]
    first, resent = outcomes[:2], outcomes[2:]
    assert {r.batch_id for r in first}.isdisjoint({r.batch_id for r in resent})
    by_id: dict[str, AuditRecord] = {r.id: r for r in resent}
    one, two = by_id["1"], by_id["2"]
    assert (one.mode, one.outcome, one.tenant, one.kind) == ("batch", "accepted", tenant, "upsert")
    assert one.batch_id is not None and one.batch_id == two.batch_id
    assert one.causes == (_cause(10), _cause(12)) and two.causes == (_cause(11),)
    assert one.fields == ("customerId", "email") and one.values == {"customerId": "1"}
    assert one.payload_sha256 != two.payload_sha256
    assert one.destination == urlsplit(sandbox.base_url).netloc
    assert time.time() * 1000 - 60_000 < one.at_ms <= time.time() * 1000
    # Each sending record is its outcome's record, written before the request left: no batch
    # id yet, an earlier time, the same entity, payload, fields, values and causes.
    for announced, answered in zip(ahead, [*first, *resent], strict=True):
        assert (announced.mode, announced.batch_id) == ("batch", None)
        assert announced.at_ms <= answered.at_ms
        assert (
            msgspec.structs.replace(
                announced, outcome="accepted", batch_id=answered.batch_id, at_ms=answered.at_ms
            )
            == answered
        )


async def test_a_window_whose_sending_records_are_not_acknowledged_sends_nothing(
    sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = unique("audit-ahead")
    definition = _definition(tmp_path, sandbox, redis_url, prefix, "batch")
    tenant = sandbox.new_tenant()
    rows = {"1": {"id": 1, "tenant": tenant, "email": "c1@example.com"}}
    producer = _Producer(lambda: None)
    writer = AuditWriter(definition, producer=producer)  # type: ignore[arg-type]
    last_sent = LastSentStore(redis_url, prefix)
    window = Window(opened_at=time.monotonic(), due_after_s=0.1)
    window.add(DirtyKey("customers", 1, _cause(10)), 10, 0.1)
    try:
        async with ReachClient(definition.destination) as client:
            sink = WindowSink(
                definition,
                client=client,
                db=_Database(rows),  # type: ignore[arg-type]
                last_sent=last_sent,
                producer=_DeadLetters(),  # type: ignore[arg-type]
                audit=writer,
                gate=TenantBlocks(definition.destination.tenant_probe),
                stats=SyncerStats(),
            )
            with pytest.raises(Retryable, match=r"audit topic t\.audit did not acknowledge 1"):
                await sink.process(window)
            assert sandbox.history(tenant, "customers", "1") == []  # never sent
            assert _keys(redis_url, prefix) == []
            assert (sink.stats.sent, sink.stats.announced, sink.stats.audited) == (0, 0, 0)

            producer.acknowledge = True
            await sink.process(window)
    finally:
        sink.close()
        await last_sent.close()
    assert len(sandbox.history(tenant, "customers", "1")) == 1
    records = [decode_audit(v) for v in producer.acknowledged]
    # The refused sending record produced again, the retry's, and its outcome.
    assert [r.outcome for r in records] == ["sending", "sending", "accepted"]


async def test_single_writes_have_no_batch_and_a_delete_is_forgotten_only_once_reported(
    sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    prefix = unique("audit-delete")
    definition = _definition(tmp_path, sandbox, redis_url, prefix, "realtime")
    resource = definition.resources["customers"]
    tenant = sandbox.new_tenant()
    last_sent = LastSentStore(redis_url, prefix)
    reports: list[tuple[list[Sent], list[Removed], list[str]]] = []
    announcements: list[tuple[list[str], list[str], list[str]]] = []
    failing = True

    async def on_sending(sending: Sequence[Sending], deleting: Sequence[Deleting]) -> None:
        ids = [s.projected.external_id for s in sending]
        announcements.append((ids, [d.external_id for d in deleting], _keys(redis_url, prefix)))

    async def on_accepted(sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
        reports.append((list(sent), list(removed), _keys(redis_url, prefix)))
        if removed and failing:
            raise Retryable("the audit topic did not acknowledge 1 record")

    async def deliver(recomputed: Recomputed) -> Any:
        return await deliver_resource(
            "customers",
            resource,
            recomputed,
            client=client,
            last_sent=last_sent,
            tenants=_Database({}),
            on_accepted=on_accepted,
            on_sending=on_sending,
        )

    row = {"id": 7, "tenant": tenant, "email": "c7@example.com"}
    try:
        async with ReachClient(definition.destination) as client:
            result = await deliver(Recomputed(rows={"7": row}, gone=[]))
            assert result.sent == 1
            ((sent, removed, redis_then),) = reports
            assert removed == [] and redis_then == []
            assert [(s.projected.external_id, s.batch_id, s.parked) for s in sent] == [
                ("7", None, False)
            ]
            remembered = await last_sent.get_many("customers", ["7"])
            assert remembered == {"7": LastSent(tenant, sent[0].projected.hash)}

            # Removed in Reach, but the report fails: its tenant is still remembered, so the
            # delete is retried, not lost; the entry is in doubt since the delete went out.
            with pytest.raises(Retryable, match="audit topic"):
                await deliver(Recomputed(rows={}, gone=[7]))
            assert await last_sent.get_many("customers", ["7"]) == {"7": LastSent(tenant, "")}
            failing = False
            result = await deliver(Recomputed(rows={}, gone=[7]))
            assert result.deleted == 1
            assert await last_sent.get_many("customers", ["7"]) == {}
    finally:
        await last_sent.close()

    # Each request was announced before it left, and an announcement remembers nothing: the
    # upsert's before anything was in Redis, each delete's with the entry still there.
    entry = f"{prefix}:last:customers:7"
    assert announcements == [(["7"], [], []), ([], ["7"], [entry]), ([], ["7"], [entry])]
    deletes = [r for _, removed, _ in reports for r in removed]
    assert [(r.tenant, r.external_id) for r in deletes] == [(tenant, "7"), (tenant, "7")]
    assert all(r.batch_id for r in deletes)
    assert all(keys == [f"{prefix}:last:customers:7"] for _, removed, keys in reports if removed)
