"""The service: both stages in one process by default, or either alone (``--role``).

Stage 1 (router) is synchronous confluent-kafka work and runs in its own thread; stage 2
(syncer) runs on the event loop with the async Reach, database and Redis clients, and so does
the scheduler (scheduled resources' runs, schedule/scheduler.py) wherever the syncer runs,
sharing its clients. A stop flag, set by SIGTERM or SIGINT, ends them all: each drains, commits
and leaves within a bounded time.

With ``health`` in the definition, ``/healthz`` and ``/readyz`` (observe/health.py) answer for
the whole life of the service, from what each stage's loop records and a probe of Redis and the
source database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal

import httpx
from confluent_kafka import Producer
from redis.asyncio import Redis

from consumer.backfill.resync import run_resyncs
from consumer.config import Destination, SyncDefinition
from consumer.kafka import producer_settings
from consumer.observe.metrics import NO_INSTRUMENTS, Instruments, metered_transport
from consumer.observe.metrics_setup import MetricsHandle, start_metrics
from consumer.observe.readiness import ServiceReadiness
from consumer.reach.breaker import BreakerTransport, Circuit
from consumer.reach.client import ReachClient, default_transport
from consumer.reach.limits import open_limiter
from consumer.records.audit import AuditWriter, ensure_audit_topic
from consumer.router.loop import STOP_BOUND_S as ROUTER_STOP_BOUND_S
from consumer.router.loop import RouterStats, run_router
from consumer.router.topics import ensure_topics
from consumer.schedule.scheduler import DRAIN_BOUND_S as SCHEDULER_DRAIN_S
from consumer.schedule.scheduler import Scheduler
from consumer.sink.dedup import LastSentStore
from consumer.sink.recompute import SourceDatabase
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.loop import Syncer
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink

__all__ = ["Role", "ServiceStats", "install_stop_signals", "run_service"]

log = logging.getLogger(__name__)

Role = Literal["all", "router", "syncer"]

# A resync stops between pages: one page's query, produce and checkpoint.
RESYNC_STOP_BOUND_S = 90.0


@dataclass
class ServiceStats:
    router: RouterStats | None = None
    syncer: SyncerStats = field(default_factory=SyncerStats)
    # What the scheduled runs' windows did (the scheduler's own window sink).
    scheduled: SyncerStats = field(default_factory=SyncerStats)
    router_error: BaseException | None = None
    # Where /healthz and /readyz answer (``health`` in the definition), once listening.
    health_port: int | None = None

    def set_router(self, snapshot: RouterStats) -> None:
        self.router = snapshot


def install_stop_signals(stop: threading.Event) -> None:
    """Signal handlers only set the flag; the loops notice it and drain."""

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: draining", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def run_service(
    definition: SyncDefinition,
    stop: threading.Event,
    role: Role = "all",
    stats: ServiceStats | None = None,
) -> ServiceStats:
    """Run until ``stop`` is set; return what each stage did. Pass ``stats`` to watch it live."""
    stats = ServiceStats() if stats is None else stats
    health = definition.health
    readiness = None if health is None else ServiceReadiness(health, definition, role, stop)
    meters = MetricsHandle()
    try:
        lag = () if readiness is None else (readiness.router, readiness.syncer_progress)
        meters = start_metrics(definition, stats, role=role, lag=lag)  # /metrics, OTLP
        if readiness is not None:
            readiness.metrics = meters
            stats.health_port = readiness.start()
        return _run_stages(definition, stop, role, stats, readiness, meters.instruments)
    finally:
        if readiness is not None:
            readiness.close()
        meters.shutdown()


def _run_stages(
    definition: SyncDefinition,
    stop: threading.Event,
    role: Role,
    stats: ServiceStats,
    readiness: ServiceReadiness | None,
    instruments: Instruments,
) -> ServiceStats:
    if role in ("all", "syncer"):
        # Before the syncer subscribes: a consumer subscribed to a topic that does not exist
        # yet finds it only at its next metadata refresh, minutes later (the router creates
        # them too, but races the syncer's subscription when both start at once).
        ensure_topics(definition)
    if role in ("all", "syncer"):
        ensure_audit_topic(definition)  # only the syncer writes it
    router_thread = None
    if role in ("all", "router"):
        progress = None if readiness is None else readiness.router

        def route() -> None:
            try:
                stats.router = run_router(
                    definition, stop, on_stats=stats.set_router, progress=progress
                )
            except BaseException as exc:
                stats.router_error = exc
                log.exception("the router stopped")
                stop.set()

        router_thread = threading.Thread(target=route, name="router", daemon=True)
        router_thread.start()
    resync_thread = None
    if role in ("all", "router"):
        # Where dirty keys are written: a changed definition is re-synced from here.
        resync_thread = threading.Thread(
            target=_resync, args=(definition, stop), name="resync", daemon=True
        )
        resync_thread.start()
    if role in ("all", "syncer"):
        asyncio.run(
            _run_syncer(definition, stop, stats.syncer, readiness, instruments, stats.scheduled)
        )
    else:
        stop.wait()
    if resync_thread is not None:
        resync_thread.join(RESYNC_STOP_BOUND_S)
        if resync_thread.is_alive():
            log.error("the resync did not stop within %.0f s", RESYNC_STOP_BOUND_S)
    if router_thread is not None:
        router_thread.join(ROUTER_STOP_BOUND_S)
        if router_thread.is_alive():
            # Its consumer is still in use: the caller must not close anything of it (the CLI
            # ends with os._exit, as for every abandoned consumer).
            stats.router_error = TimeoutError(f"did not stop within {ROUTER_STOP_BOUND_S:.0f} s")
            log.error("the router %s", stats.router_error)
    return stats


def _resync(definition: SyncDefinition, stop: threading.Event) -> None:
    """Re-sync what the definition changed (backfill/resync.py); a failure is logged and
    retried there, and never stops the service: live changes go on either way."""
    try:
        asyncio.run(run_resyncs(definition, stop))
    except Exception:
        log.exception("the resync stopped; it is tried again at the next start")


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


async def _run_syncer(
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
