"""The service: both stages in one process by default, or either alone (``--role``).

Stage 1 (router) is synchronous confluent-kafka work and runs in its own thread; stage 2
(syncer) runs on the event loop with the async Reach, database and Redis clients. A stop flag,
set by SIGTERM or SIGINT, ends both: each drains, commits and leaves within a bounded time.

With ``health`` in the definition, ``/healthz`` and ``/readyz`` (consumer/health.py) answer for
the whole life of the service, from what each stage's loop records and a probe of Redis and the
source database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

import httpx
import psycopg
import redis
from confluent_kafka import Producer

from consumer.config import Destination, HealthSettings, SyncDefinition
from consumer.errors import ConfigurationError
from consumer.kafka import producer_settings
from consumer.observe.health import HealthServer, Snapshot
from consumer.observe.metrics import MetricsHandle, exposition, metered_transport, start_metrics
from consumer.observe.progress import ProgressTracker
from consumer.reach.breaker import BreakerTransport, Circuit
from consumer.reach.client import ReachClient, default_transport
from consumer.reach.limits import open_limiter
from consumer.records.audit import AuditWriter, ensure_audit_topic
from consumer.router.loop import STOP_BOUND_S as ROUTER_STOP_BOUND_S
from consumer.router.loop import RouterStats, run_router
from consumer.router.topics import ensure_topics
from consumer.sink.dedup import LastSentStore
from consumer.sink.recompute import SourceDatabase
from consumer.syncer.loop import Syncer, SyncerStats

__all__ = ["Role", "ServiceStats", "install_stop_signals", "run_service"]

log = logging.getLogger(__name__)

Role = Literal["all", "router", "syncer"]

# Redis and the source database are checked this often for readiness, each check bounded by
# PROBE_TIMEOUT_S; a check older than PROBE_STALE_S (one hung past its timeout) counts as failed.
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 2.0
PROBE_STALE_S = PROBE_INTERVAL_S + 5 * PROBE_TIMEOUT_S


@dataclass
class ServiceStats:
    router: RouterStats | None = None
    syncer: SyncerStats = field(default_factory=SyncerStats)
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
    readiness = None if health is None else _Readiness(health, definition, role, stop)
    meters = MetricsHandle()
    try:
        lag = () if readiness is None else (readiness.router, readiness.syncer_progress)
        meters = start_metrics(definition, stats, role=role, lag=lag)  # /metrics, OTLP
        if readiness is not None:
            stats.health_port = readiness.start()
        return _run_stages(definition, stop, role, stats, readiness)
    finally:
        if readiness is not None:
            readiness.close()
        meters.shutdown()


def _run_stages(
    definition: SyncDefinition,
    stop: threading.Event,
    role: Role,
    stats: ServiceStats,
    readiness: _Readiness | None,
) -> ServiceStats:
    if role == "syncer":
        ensure_topics(definition)  # the router creates them itself when it runs
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
    if role in ("all", "syncer"):
        asyncio.run(_run_syncer(definition, stop, stats.syncer, readiness))
    else:
        stop.wait()
    if router_thread is not None:
        router_thread.join(ROUTER_STOP_BOUND_S)
        if router_thread.is_alive():
            # Its consumer is still in use: the caller must not close anything of it (the CLI
            # ends with os._exit, as for every abandoned consumer).
            stats.router_error = TimeoutError(f"did not stop within {ROUTER_STOP_BOUND_S:.0f} s")
            log.error("the router %s", stats.router_error)
    return stats


async def _run_syncer(
    definition: SyncDefinition,
    stop: threading.Event,
    stats: SyncerStats,
    readiness: _Readiness | None = None,
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
                definition,
                client,
                db,
                last_sent,
                producer,
                audit,
                stats=stats,
                circuit=circuit,
                progress=None if readiness is None else readiness.syncer_progress,
            )
            if readiness is not None:
                readiness.syncer = syncer
            return await syncer.run(stop)
    finally:
        await last_sent.close()
        await db.close()


def _reach_transport(destination: Destination, circuit: Circuit) -> httpx.AsyncBaseTransport:
    """The client's default transport behind the circuit breaker, which sees every request
    and its outcome there."""
    return BreakerTransport(metered_transport(default_transport(destination)), circuit)


class _Readiness:
    """What ``/readyz`` is decided from, and the server that answers it.

    Each stage's loop records its partitions' progress into its tracker; the syncer's circuit
    and blocked tenants come from ``Syncer.health()``; Redis and the database from a probe of
    their own. Everything the server's thread reads is either immutable or made for reading
    from any thread: it never calls into a consumer (consumer/health.py says why).
    """

    def __init__(
        self,
        settings: HealthSettings,
        definition: SyncDefinition,
        role: Role,
        stop: threading.Event,
    ) -> None:
        self._stop = stop
        self._started_at = time.monotonic()
        self.router = ProgressTracker("router") if role in ("all", "router") else None
        self.syncer_progress = ProgressTracker("syncer") if role in ("all", "syncer") else None
        self.syncer: Syncer | None = None  # set once it exists
        try:
            self._server = HealthServer(
                settings.host,
                settings.port,
                self.snapshot,
                settings.stall_after_s,
                metrics=exposition,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"health: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from exc
        # The router uses neither Redis nor the database once started (nor Reach at all).
        self._probe = _DependencyProbe(definition) if role in ("all", "syncer") else None
        self._host = settings.host

    def start(self) -> int:
        self._server.start()
        if self._probe is not None:
            self._probe.start()
        port = self._server.port
        log.info("health: /healthz and /readyz on http://%s:%d", self._host, port)
        return port

    def close(self) -> None:
        self._server.close()
        if self._probe is not None:
            self._probe.close()

    def snapshot(self) -> Snapshot:
        """From the server's thread."""
        now = time.monotonic()
        trackers = (self.router, self.syncer_progress)
        syncer = self.syncer
        health = None if syncer is None else syncer.health()
        return Snapshot.of(
            (t.view() for t in trackers if t is not None),
            started_at=self._started_at,
            reach_ok=health is None or health.circuit == "closed",
            redis_ok=self._probe is None or self._probe.ok("redis", now),
            database_ok=self._probe is None or self._probe.ok("database", now),
            blocked_tenants=() if health is None else tuple(sorted(health.blocked)),
            configuration_errors=()
            if health is None
            else tuple(f"partition {n}: {error}" for n, error in sorted(health.stalled.items())),
            stopping=self._stop.is_set(),
        )


class _DependencyProbe:
    """Redis and the source database, checked from a thread of its own every PROBE_INTERVAL_S:
    a PING, and a ``SELECT 1`` on one connection kept open (read-only, like the syncer's).

    The syncer's own clients notice an outage only when a window uses them
    (``LastSentStore.available`` changes on use, and stays false after Redis is back until the
    next window; the pool says nothing while idle), so an idle process would report whatever
    was true at its last window. Two trivial round trips every few seconds, off the event loop.
    """

    def __init__(self, definition: SyncDefinition) -> None:
        self._redis = redis.Redis.from_url(
            definition.redis.url.get_secret_value(),
            socket_timeout=PROBE_TIMEOUT_S,
            socket_connect_timeout=PROBE_TIMEOUT_S,
        )
        self._dsn = definition.source.database.dsn.get_secret_value()
        self._db: psycopg.Connection[Any] | None = None
        now = time.monotonic()
        # (reachable, when last checked) by dependency; taken as fine until the first check.
        self._checked = {"redis": (True, now), "database": (True, now)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is None:  # never started: nothing was connected
            self._redis.close()
        else:
            self._thread.join(PROBE_STALE_S)  # its loop closes its connections as it ends

    def ok(self, dependency: str, now: float) -> bool:
        reachable, at = self._checked[dependency]
        return reachable and now - at <= PROBE_STALE_S

    def _run(self) -> None:
        try:
            while True:
                self._record("redis", "Redis", self._ping_redis())
                self._record("database", "the source database", self._ping_database())
                if self._stop.wait(PROBE_INTERVAL_S):
                    return
        finally:
            self._redis.close()
            if self._db is not None:
                self._db.close()

    def _record(self, dependency: str, name: str, failure: str | None) -> None:
        was, _ = self._checked[dependency]
        self._checked[dependency] = (failure is None, time.monotonic())
        if was and failure is not None:
            log.warning("readiness: %s unreachable (%s)", name, failure)
        elif not was and failure is None:
            log.info("readiness: %s reachable again", name)

    def _ping_redis(self) -> str | None:
        try:
            self._redis.ping()
        except (redis.RedisError, OSError) as exc:
            return type(exc).__name__
        return None

    def _ping_database(self) -> str | None:
        try:
            if self._db is None:
                self._db = psycopg.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=max(2, int(PROBE_TIMEOUT_S)),  # libpq's minimum is 2
                    options=f"-c statement_timeout={int(PROBE_TIMEOUT_S * 1000)}"
                    " -c default_transaction_read_only=on",
                )
            self._db.execute("SELECT 1")
        except psycopg.Error as exc:
            if self._db is not None:
                self._db.close()
                self._db = None
            return type(exc).__name__
        return None
