"""The service: both stages in one process by default, or either alone (``--role``).

Stage 1 (router) is synchronous confluent-kafka work and runs in its own thread; stage 2
(syncer) runs on the event loop with the async Reach, database and Redis clients. A stop flag,
set by SIGTERM or SIGINT, ends both: each drains, commits and leaves within a bounded time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal

import httpx
from confluent_kafka import Producer
from httpx_aiohttp import AiohttpTransport

from consumer.audit import AuditWriter, ensure_audit_topic
from consumer.config import Destination, SyncDefinition
from consumer.dedup import LastSentStore
from consumer.kafka import producer_settings
from consumer.reach.breaker import BreakerTransport, Circuit
from consumer.reach.client import ReachClient
from consumer.reach.limits import open_limiter
from consumer.recompute import SourceDatabase
from consumer.router import RouterStats, run_router
from consumer.router_setup import ensure_topics
from consumer.syncer import Syncer, SyncerStats

__all__ = ["Role", "ServiceStats", "install_stop_signals", "run_service"]

log = logging.getLogger(__name__)

Role = Literal["all", "router", "syncer"]


@dataclass
class ServiceStats:
    router: RouterStats | None = None
    syncer: SyncerStats = field(default_factory=SyncerStats)
    router_error: BaseException | None = None

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
    if role == "syncer":
        ensure_topics(definition)  # the router creates them itself when it runs
    if role in ("all", "syncer"):
        ensure_audit_topic(definition)  # only the syncer writes it
    stats = ServiceStats() if stats is None else stats
    router_thread = None
    if role in ("all", "router"):

        def route() -> None:
            try:
                stats.router = run_router(definition, stop, on_stats=stats.set_router)
            except BaseException as exc:
                stats.router_error = exc
                log.exception("the router stopped")
                stop.set()

        router_thread = threading.Thread(target=route, name="router", daemon=True)
        router_thread.start()
    if role in ("all", "syncer"):
        asyncio.run(_run_syncer(definition, stop, stats.syncer))
    else:
        stop.wait()
    if router_thread is not None:
        router_thread.join()
    return stats


async def _run_syncer(
    definition: SyncDefinition, stop: threading.Event, stats: SyncerStats
) -> SyncerStats:
    db = SourceDatabase(definition.source.database)
    last_sent = LastSentStore(definition.redis.url.get_secret_value(), definition.redis.key_prefix)
    producer = Producer(producer_settings(definition.source.kafka))
    audit = AuditWriter(definition)
    circuit = Circuit(definition.destination.circuit_breaker)
    await db.open()
    try:
        async with (
            open_limiter(definition) as limiter,
            ReachClient(
                definition.destination,
                transport=_reach_transport(definition.destination, circuit),
                before_request=limiter.before_request,
                after_response=limiter.after_response,
            ) as client,
        ):
            syncer = Syncer(
                definition, client, db, last_sent, producer, audit, stats=stats, circuit=circuit
            )
            return await syncer.run(stop)
    finally:
        await last_sent.close()
        await db.close()


def _reach_transport(destination: Destination, circuit: Circuit) -> httpx.AsyncBaseTransport:
    """The transport ReachClient builds by default (aiohttp, ``max_connections`` pooled),
    behind the circuit breaker, which sees every request and its outcome there."""
    size = destination.max_connections
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    return BreakerTransport(AiohttpTransport(limits=limits), circuit)
