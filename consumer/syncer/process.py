"""The syncer's process-wide parts: one Reach client, the window sinks that share it, and the
scheduler beside the syncer's loop.

consumer/service.py imports this only when the process runs the syncer (``--role all`` or
``syncer``): a router-only process never loads the Reach client, its transport, the limiter, the
circuit breaker, the window sink, the scheduler or the audit writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from confluent_kafka import Producer
from redis.asyncio import Redis

from consumer.config import Destination, SyncDefinition
from consumer.kafka import producer_settings
from consumer.observe.metrics import NO_INSTRUMENTS, Instruments, metered_transport
from consumer.reach.breaker import BreakerTransport, Circuit
from consumer.reach.client import ReachClient, default_transport
from consumer.reach.limits import open_limiter
from consumer.records.audit import AuditWriter
from consumer.schedule.scheduler import DRAIN_BOUND_S as SCHEDULER_DRAIN_S
from consumer.schedule.scheduler import Scheduler
from consumer.sink.dedup import LastSentStore
from consumer.sink.recompute import SourceDatabase
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.loop import Syncer
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink

if TYPE_CHECKING:
    from consumer.observe.readiness import ServiceReadiness

__all__ = ["run_syncer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _SinkParts:
    """What every window sink of a process shares: one Reach client (one connection pool, one
    rate limiter, one circuit), the source database's pool, the last-sent store, the dead-letter
    producer and the tenant gate."""

    client: ReachClient
    db: SourceDatabase
    last_sent: LastSentStore
    producer: Producer
    gate: TenantBlocks
    instruments: Instruments

    def window_sink(self, definition: SyncDefinition, stats: SyncerStats) -> WindowSink:
        """A sink with its own audit writer and stats: the audit writer's flushes are counted
        per sink (window_sink.py), and a scheduled run's counts are its sink's."""
        return WindowSink(
            definition,
            client=self.client,
            db=self.db,
            last_sent=self.last_sent,
            producer=self.producer,
            audit=AuditWriter(definition),
            gate=self.gate,
            stats=stats,
            instruments=self.instruments,
        )


async def run_syncer(
    definition: SyncDefinition,
    stop: threading.Event,
    stats: SyncerStats,
    readiness: ServiceReadiness | None = None,
    instruments: Instruments = NO_INSTRUMENTS,
    scheduled_stats: SyncerStats | None = None,
) -> SyncerStats:
    db = SourceDatabase(definition.source.database)
    last_sent = LastSentStore(definition.redis.url.get_secret_value(), definition.redis.key_prefix)
    producer = Producer(producer_settings(definition.source.kafka))
    circuit = Circuit(definition.destination.circuit_breaker)
    await db.open()
    try:
        async with (
            open_limiter(definition, instruments) as limiter,
            ReachClient(
                definition.destination,
                transport=_reach_transport(definition.destination, circuit, instruments),
                before_request=limiter.before_request,
                after_response=limiter.after_response,
            ) as client,
        ):
            blocks = TenantBlocks(definition.destination.tenant_probe)
            parts = _SinkParts(client, db, last_sent, producer, blocks, instruments)
            sink = parts.window_sink(definition, stats)
            syncer = Syncer(
                definition,
                sink,
                blocks,
                stats=stats,
                instruments=instruments,
                circuit=circuit,
                progress=None if readiness is None else readiness.syncer_progress,
            )
            if readiness is not None:
                readiness.syncer = syncer
            if not definition.scheduled_resources():
                return await syncer.run(stop)
            scheduled = parts.window_sink(definition, scheduled_stats or SyncerStats())
            async with _scheduler(definition, scheduled, producer, stop):
                return await syncer.run(stop)
    finally:
        await last_sent.close()
        await db.close()


@contextlib.asynccontextmanager
async def _scheduler(
    definition: SyncDefinition, sink: WindowSink, producer: Producer, stop: threading.Event
) -> AsyncIterator[None]:
    """The scheduler runs beside the block on the same loop and ends with it: on ``stop`` it
    finishes its window (bounded), and it is cancelled if the block ends otherwise."""
    redis: Redis = Redis.from_url(definition.redis.url.get_secret_value())
    scheduler = Scheduler(definition, sink, redis, producer)
    task = asyncio.create_task(scheduler.run(stop), name="scheduler")
    try:
        yield
    finally:
        if not stop.is_set():
            task.cancel()
        done, _ = await asyncio.wait([task], timeout=SCHEDULER_DRAIN_S + 5)
        if not done:
            task.cancel()
            log.error("the scheduler did not stop within %.0f s", SCHEDULER_DRAIN_S + 5)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sink.close()
        await redis.aclose()


def _reach_transport(
    destination: Destination, circuit: Circuit, instruments: Instruments
) -> httpx.AsyncBaseTransport:
    """The client's default transport behind the circuit breaker, which sees every request
    and its outcome there; counted into ``instruments``."""
    metered = metered_transport(default_transport(destination), instruments)
    return BreakerTransport(metered, circuit)
