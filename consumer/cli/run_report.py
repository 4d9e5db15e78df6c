"""What ``reach-sync run`` says about its own work: a progress line in the log every so often
(INFO), and every counter of the stages it ran as one JSON line on stderr when it ends.

Both read the ``ServiceStats`` the service updates as it runs (the router's latest snapshot, the
syncer's live counters); nothing here touches the stages themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from consumer.cli.progress import format_rate, rate

if TYPE_CHECKING:  # the service's imports are heavy; commands that do not run it skip them
    from consumer.service import Role, ServiceStats

__all__ = ["ProgressLog", "RunSample", "final_stats", "progress_line", "stage_counters"]

log = logging.getLogger(__name__)


def stage_counters(stats: object | None) -> dict[str, Any]:
    """A stage's counters for JSON: every field but the latency samples; a ``Counter`` (the
    router's ignored events by reason) as an object. ``None`` (a stage that reported nothing):
    {}."""
    if stats is None or not dataclasses.is_dataclass(stats):
        return {}
    counts: dict[str, Any] = {}
    for field in dataclasses.fields(stats):
        value = getattr(stats, field.name)
        if isinstance(value, deque):
            continue
        counts[field.name] = dict(value) if isinstance(value, Counter) else value
    return counts


def final_stats(stats: ServiceStats, role: Role) -> dict[str, dict[str, Any]]:
    """The counters of each stage this process ran, the syncer's first (scripts look for a line
    starting ``{"syncer"``), then the router's."""
    report: dict[str, dict[str, Any]] = {}
    if role in ("all", "syncer"):
        report["syncer"] = stage_counters(stats.syncer)
    if role in ("all", "router"):
        report["router"] = stage_counters(stats.router)
    return report


@dataclass(frozen=True, slots=True)
class RunSample:
    """The counters a progress line is made of, at monotonic time ``at``."""

    at: float
    events: int = 0
    routed: int = 0  # dirty keys the router produced
    router_dead: int = 0
    taken: int = 0  # dirty keys the syncer read
    sent: int = 0
    skipped: int = 0
    deleted: int = 0
    syncer_dead: int = 0
    in_flight: int = 0
    blocked_tenants: int = 0

    @classmethod
    def of(cls, stats: ServiceStats, at: float) -> RunSample:
        router, syncer = stats.router, stats.syncer
        return cls(
            at=at,
            events=router.events if router else 0,
            routed=router.dirty_keys if router else 0,
            router_dead=router.dead_lettered if router else 0,
            taken=syncer.dirty_keys,
            sent=syncer.sent,
            skipped=syncer.skipped,
            deleted=syncer.deleted,
            syncer_dead=syncer.dead_lettered,
            in_flight=syncer.in_flight,
            blocked_tenants=syncer.blocked_tenants,
        )


def progress_line(role: Role, before: RunSample, now: RunSample) -> str:
    """``progress: router 1,200 events (40.0/s), 900 dirty keys, 0 dead-lettered; syncer 880
    dirty keys (29.3/s), 700 sent, 150 unchanged, 30 deleted, 0 dead-lettered, 20 in flight;
    backlog 20``: totals since the start, rates over the time since ``before``. The backlog
    (dirty keys produced and not yet read) only when this process runs both stages."""
    span = now.at - before.at
    parts = []
    if role in ("all", "router"):
        parts.append(
            f"router {now.events:,} events ({format_rate(rate(now.events - before.events, span))})"
            f", {now.routed:,} dirty keys, {now.router_dead:,} dead-lettered"
        )
    if role in ("all", "syncer"):
        blocked = f", {now.blocked_tenants} tenants refused" if now.blocked_tenants else ""
        parts.append(
            f"syncer {now.taken:,} dirty keys ({format_rate(rate(now.taken - before.taken, span))})"
            f", {now.sent:,} sent, {now.skipped:,} unchanged, {now.deleted:,} deleted, "
            f"{now.syncer_dead:,} dead-lettered, {now.in_flight:,} in flight{blocked}"
        )
    line = "progress: " + "; ".join(parts)
    if role == "all":
        line += f"; backlog {max(0, now.routed - now.taken):,}"
    return line


class ProgressLog:
    """Logs ``progress_line`` every ``interval_s`` from a daemon thread, between ``start`` and
    ``stop``."""

    def __init__(
        self,
        stats: ServiceStats,
        role: Role,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._role = role
        self._interval_s = interval_s
        self._clock = clock
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="run-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def tick(self, before: RunSample) -> RunSample:
        """Log one line for the time since ``before``; return the sample it ends with."""
        now = RunSample.of(self._stats, self._clock())
        log.info("%s", progress_line(self._role, before, now))
        return now

    def _run(self) -> None:
        before = RunSample.of(self._stats, self._clock())
        while not self._stopped.wait(self._interval_s):
            before = self.tick(before)
