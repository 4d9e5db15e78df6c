"""What ``/readyz`` is decided from while the service runs, and the server that answers it.

Each stage's loop records its partitions' progress into its tracker; the syncer's circuit and
blocked tenants come from ``Syncer.health()``; Redis and the source database from a probe of
their own, on a thread of its own. The server's thread only reads (docs/design.md, "Health
and readiness").
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import redis

from consumer.config import HealthSettings, SyncDefinition
from consumer.errors import ConfigurationError
from consumer.observe.health import HealthServer, Snapshot
from consumer.observe.metrics_setup import MetricsHandle
from consumer.observe.progress import ProgressTracker

if TYPE_CHECKING:
    from consumer.syncer.loop import Syncer

__all__ = ["PROBE_STALE_S", "DependencyProbe", "ServiceReadiness"]

log = logging.getLogger(__name__)

# Redis and the source database are checked this often for readiness, each check bounded by
# PROBE_TIMEOUT_S; a check older than PROBE_STALE_S (one hung past its timeout) counts as failed.
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 2.0
PROBE_STALE_S = PROBE_INTERVAL_S + 5 * PROBE_TIMEOUT_S


class ServiceReadiness:
    """What ``/readyz`` is decided from, and the server that answers it.

    Each stage's loop records its partitions' progress into its tracker; the syncer's circuit
    and blocked tenants come from ``Syncer.health()``; Redis and the database from a probe of
    their own. Everything the server's thread reads is either immutable or made for reading
    from any thread: it never calls into a consumer (consumer/observe/progress.py says why).
    """

    def __init__(
        self,
        settings: HealthSettings,
        definition: SyncDefinition,
        role: Literal["all", "router", "syncer"],
        stop: threading.Event,
    ) -> None:
        self._stop = stop
        self._started_at = time.monotonic()
        self.router = ProgressTracker("router") if role in ("all", "router") else None
        self.syncer_progress = ProgressTracker("syncer") if role in ("all", "syncer") else None
        self.syncer: Syncer | None = None  # set once it exists
        # The run's metrics, for /metrics, once they are started.
        self.metrics = MetricsHandle()
        try:
            self._server = HealthServer(
                settings.host,
                settings.port,
                self.snapshot,
                settings.stall_after_s,
                metrics=lambda: self.metrics.exposition(),
            )
        except OSError as exc:
            raise ConfigurationError(
                f"health: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from exc
        # The router uses neither Redis nor the database once started (nor Reach at all).
        self._probe = DependencyProbe(definition) if role in ("all", "syncer") else None
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


class DependencyProbe:
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
