"""A process that ends after its request left Reach still leaves an audit record of every state
Reach applies: the request's ``sending`` records, written and acknowledged before it left.

On the real sandbox, broker and Redis: a window goes through the syncer's ``WindowSink`` with
the real ``AuditWriter``, and its process "ends" (kill -9) the moment Reach answered the
request: from the client's response hook, the producer stops taking records (nothing of ours
that runs later reaches the audit topic, as after a kill) and the window's task is cancelled.
The sandbox holds batches in ``processing`` (``batch_delay``), so a batch is applied after
the process ended. Then every version the sandbox applied (its ``/_admin/history``) must have
a ``sending`` record with its tenant, schema, id and payload hash; ``audit why`` shows it as
left, outcome unknown; and the partition's next owner sends again and audits that send.

Before the write-ahead record, the audit topic had nothing at all for these states (the
chaos suite's 19 unaudited states after kill -9: docs/design.md, "Audit").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from reach_sandbox.testing import PARTNER_ID, PARTNER_SECRET, SandboxServer, running_sandbox

from consumer.config import Resource, SyncDefinition
from consumer.config_file import load_definition
from consumer.kafka import producer_settings
from consumer.reach.client import ReachClient, RequestInfo
from consumer.records.audit import (
    PARTITIONER,
    AuditRecord,
    AuditWriter,
    decode_audit,
    ensure_audit_topic,
)
from consumer.records.audit_read import Query, read_history
from consumer.records.dlq_read import end_offsets, messages_to_end, reader_settings
from consumer.router.dirty import Cause, DirtyKey, EntityId
from consumer.sink.dedup import LastSentStore
from consumer.sink.projection import payload_hash
from consumer.sink.recompute import Recomputed
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window

DEFINITION = """
version: 1
source:
  kafka: {bootstrap_servers: "@BROKER@", group_id: "@PREFIX@", topics: [unused]}
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
topics:
  dirty: "@PREFIX@.dirty"
  dirty_partitions: 1
  dead_letter: "@PREFIX@.dead-letter"
  audit: "@PREFIX@.audit"
"""
# Long enough that the batch is still processing when the process ends, short for the test.
BATCH_DELAY_S = 1.0


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


@dataclass
class _Setup:
    definition: SyncDefinition
    resource: Resource
    redis_url: str
    tenant: str


@pytest.fixture(params=["batch", "realtime"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _setup(
    tmp_path: Path,
    sandbox: SandboxServer,
    broker: str,
    redis_url: str,
    prefix: str,
    mode: str,
) -> _Setup:
    text = DEFINITION
    for name, value in {
        "BROKER": broker,
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
    definition = load_definition(path, env)
    ensure_audit_topic(definition)
    tenant = sandbox.new_tenant()
    return _Setup(definition, definition.resources["customers"], redis_url, tenant)


class _Mortal:
    """The audit writer's producer (a real one, the partitioner pinned as the writer pins it),
    until ``die``: from then on nothing it is given reaches the broker, as after kill -9."""

    def __init__(self, definition: SyncDefinition) -> None:
        kafka = definition.source.kafka
        self._producer = Producer(producer_settings(kafka, partitioner=PARTITIONER))
        self.dead = False

    def die(self) -> None:
        self.dead = True

    def produce(self, topic: str, **kwargs: Any) -> None:
        if not self.dead:
            self._producer.produce(topic, **kwargs)

    def poll(self, timeout: float) -> int:
        return 0 if self.dead else self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        return 0 if self.dead else self._producer.flush(timeout)


class _Database:
    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows

    async def recompute(self, resource: Resource, ids: Sequence[EntityId]) -> Recomputed:
        found = {str(i): self.rows[str(i)] for i in ids if str(i) in self.rows}
        return Recomputed(rows=found, gone=[i for i in ids if str(i) not in found])

    async def tenants(self, resource: Resource) -> list[str]:
        return []


class _DeadLetters:
    def flush(self, timeout: float) -> int:
        return 0


def _window(ids: Sequence[int]) -> Window:
    window = Window(opened_at=time.monotonic(), due_after_s=0.1)
    for offset, n in enumerate(ids):
        cause = Cause(kind="cdc", table="public.customers", op="u", topic="shop", offset=offset)
        window.add(DirtyKey("customers", n, cause), offset, 0.1)
    return window


async def _process(
    setup: _Setup,
    rows: dict[str, dict[str, Any]],
    window: Window,
    *,
    dies_after: str | None = None,
) -> None:
    """One process taking ``window`` through a sink of its own (its own Reach client, audit
    writer and ``Outstanding``, as after a restart). ``dies_after``: the Reach operation whose
    successful answer ends the process (module docstring); None: it finishes the window."""
    definition = setup.definition
    producer = _Mortal(definition)
    task: asyncio.Task[None] | None = None

    def answered(info: RequestInfo, response: httpx.Response) -> None:
        if info.operation == dies_after and response.is_success and not producer.dead:
            producer.die()
            assert task is not None
            task.cancel()

    last_sent = LastSentStore(setup.redis_url, definition.redis.key_prefix)
    client = ReachClient(definition.destination, after_response=answered)
    sink = WindowSink(
        definition,
        client=client,
        db=_Database(rows),  # type: ignore[arg-type]
        last_sent=last_sent,
        producer=_DeadLetters(),  # type: ignore[arg-type]
        audit=AuditWriter(definition, producer=producer),  # type: ignore[arg-type]
        gate=TenantBlocks(definition.destination.tenant_probe),
        stats=SyncerStats(),
    )
    try:
        task = asyncio.ensure_future(sink.process(window))
        if dies_after is None:
            await task
        else:
            with pytest.raises(asyncio.CancelledError):
                await task
            assert producer.dead, f"no {dies_after} was answered"
    finally:
        sink.close()
        await client.aclose()
        await last_sent.close()


def _audit(definition: SyncDefinition) -> list[AuditRecord]:
    """Every record on the audit topic, in order."""
    consumer = Consumer(reader_settings(definition.source.kafka))
    try:
        topic = definition.topics.audit
        ends = end_offsets(consumer, topic)
        return [decode_audit(m.value() or b"") for m in messages_to_end(consumer, topic, ends)]
    finally:
        consumer.close()


def _applied(sandbox: SandboxServer, setup: _Setup, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every version the sandbox applied of these entities (``externalId`` added)."""
    return [
        {**version, "externalId": str(n)}
        for n in ids
        for version in sandbox.history(setup.tenant, setup.resource.reach_schema, str(n))
    ]


def _unaudited(
    setup: _Setup, applied: list[dict[str, Any]], records: list[AuditRecord]
) -> list[dict[str, Any]]:
    """The applied versions that no ``sending`` record of the same tenant, schema, id, kind
    and payload hash (of the record as sent: every mapped field) accounts for."""
    announced = {
        (r.tenant, r.reach_schema, r.id, r.kind, r.payload_sha256)
        for r in records
        if r.outcome == "sending"
    }
    missing = []
    for version in applied:
        data = version["data"]
        digest = (
            None if data is None else payload_hash({f: data.get(f) for f in setup.resource.mapping})
        )
        kind = "delete" if data is None else "upsert"
        wanted = (setup.tenant, setup.resource.reach_schema, version["externalId"], kind, digest)
        if wanted not in announced:
            missing.append(version)
    return missing


async def test_a_send_that_left_before_the_process_ended_is_audited_ahead(
    sandbox: SandboxServer,
    broker: str,
    redis_url: str,
    unique: Callable[[str], str],
    tmp_path: Path,
    mode: str,
) -> None:
    """Batch mode: the process ends on the 202 of its batch POST, the batch still processing.
    Real time: it ends on the answer to the first of its single writes (the others are in
    flight). Reach applies them after the process ended; every applied state has its sending
    record, and no outcome record was written."""
    setup = _setup(tmp_path, sandbox, broker, redis_url, unique("ahead"), mode)
    ids = [1, 2, 3]
    rows = {str(n): {"id": n, "tenant": setup.tenant, "email": f"c{n}@example.com"} for n in ids}
    sandbox.add_fault(kind="batch_delay", seconds=BATCH_DELAY_S, tenant=setup.tenant)
    operation = "upsert_batch" if mode == "batch" else "upsert_one"

    await _process(setup, rows, _window(ids), dies_after=operation)
    if mode == "batch":  # still processing when the process ended
        assert _applied(sandbox, setup, ids) == []
    await asyncio.to_thread(sandbox.wait_idle)
    applied = _applied(sandbox, setup, ids)
    assert applied, "Reach applied nothing"
    records = _audit(setup.definition)
    assert _unaudited(setup, applied, records) == []
    # What the process wrote: one sending record per entity, then nothing (it ended).
    expected_mode = "batch" if mode == "batch" else "realtime"
    assert sorted((r.id, r.outcome, r.mode, r.batch_id) for r in records) == [
        (str(n), "sending", expected_mode, None) for n in ids
    ]

    # `audit why`: left, outcome unknown.
    (entry,) = read_history(setup.definition, Query("customers", "1")).entries
    assert entry.outcome_unknown

    # The partition's next owner: the entries were put in doubt, so it sends again, and audits.
    await _process(setup, rows, _window(ids))
    await asyncio.to_thread(sandbox.wait_idle)
    records = _audit(setup.definition)
    assert _unaudited(setup, _applied(sandbox, setup, ids), records) == []
    history = read_history(setup.definition, Query("customers", "1")).entries
    assert [(e.record.outcome, e.outcome_unknown) for e in history] == [
        ("accepted", False),
        ("sending", True),
    ]
    assert history[0].announced_ms is not None
    assert history[0].announced_ms > history[1].record.at_ms


async def test_a_delete_that_left_before_the_process_ended_is_audited_ahead(
    sandbox: SandboxServer,
    broker: str,
    redis_url: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    setup = _setup(tmp_path, sandbox, broker, redis_url, unique("ahead-delete"), "batch")
    rows = {"7": {"id": 7, "tenant": setup.tenant, "email": "c7@example.com"}}
    await _process(setup, rows, _window([7]))  # sent and remembered: its tenant is known
    sandbox.add_fault(kind="batch_delay", seconds=BATCH_DELAY_S, tenant=setup.tenant)

    await _process(setup, {}, _window([7]), dies_after="delete_batch")  # gone at the source
    assert [v["data"] is None for v in _applied(sandbox, setup, [7])] == [False]
    await asyncio.to_thread(sandbox.wait_idle)
    applied = _applied(sandbox, setup, [7])
    assert [v["data"] is None for v in applied] == [False, True]
    records = _audit(setup.definition)
    assert _unaudited(setup, applied, records) == []
    assert [(r.kind, r.outcome) for r in records] == [
        ("upsert", "sending"),
        ("upsert", "accepted"),
        ("delete", "sending"),
    ]
