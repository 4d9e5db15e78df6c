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
import logging
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Literal

from consumer.backfill.resync import run_resyncs
from consumer.config import SyncDefinition
from consumer.observe.metrics_setup import MetricsHandle, start_metrics
from consumer.observe.readiness import ServiceReadiness
from consumer.records.audit import ensure_audit_topic
from consumer.router.loop import STOP_BOUND_S as ROUTER_STOP_BOUND_S
from consumer.router.loop import RouterStats, run_router
from consumer.router.topics import ensure_topics
from consumer.syncer.stats import SyncerStats

if TYPE_CHECKING:
    from consumer.observe.metrics import Instruments

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
        # Imported here, not above: only a process that runs the syncer needs the Reach client,
        # the window sinks and the scheduler; a router-only process never loads them.
        from consumer.syncer.process import run_syncer

        asyncio.run(
            run_syncer(definition, stop, stats.syncer, readiness, instruments, stats.scheduled)
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
