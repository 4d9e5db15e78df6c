"""OpenTelemetry metrics: what the pipeline records, and what it costs to record it.

A run's ``Instruments`` (started by metrics_setup.py) are passed to what records: the syncer,
its window sink, the rate limiter, the Reach transport. ``NO_INSTRUMENTS`` records nothing when
metrics are off. Nothing is recorded per event or per record (a call into the SDK costs several
microseconds): what the stages count already is read at collection (metrics_setup.py), the rest
once per window, resource, request or rate-limit wait. Attributes stay bounded: never a tenant
or an entity id. The readers, the cost rules and the metric list: docs/operations.md, "Metrics".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation

if TYPE_CHECKING:
    import httpx

    from consumer.sink.delivery import DeliveryResult
    from consumer.syncer.windows import Window

__all__ = [
    "LATENCY_SAMPLES_PER_WINDOW",
    "NO_INSTRUMENTS",
    "Instruments",
    "metered_transport",
]

log = logging.getLogger(__name__)

METER_NAME = "reach_sync"
# Source commit → Reach accepted, seconds: the target is 300 ms at p99; a backlog reaches minutes.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WINDOW_AGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
WINDOW_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
QUERY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0)
# Latencies one window records at most (see the module docstring).
LATENCY_SAMPLES_PER_WINDOW = 64
# A rate-limit wait shorter than this is no wait (an await that did not sleep).
MIN_WAIT_S = 0.001


RESOURCE = "reach_sync.resource"
OUTCOME = "reach_sync.outcome"
STAGE = "reach_sync.stage"
STATUS = "http.response.status_code"
METHOD = "http.request.method"
ERROR = "error.type"
TOPIC = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
EVENT_KIND = "reach_sync.event.kind"


# --- what the pipeline records into -------------------------------------------------------------


class ReachTraffic:
    """Reach requests by method and status (or error class), and what is in flight: plain
    counts kept by the transport (one dict update per request), read at collection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: Counter[tuple[str, int | None, str | None]] = Counter()
        self._requests = 0
        self._bytes = 0

    def started(self, size: int) -> None:
        with self._lock:
            self._requests += 1
            self._bytes += size

    def finished(self, size: int, method: str, status: int | None, error: str | None) -> None:
        with self._lock:
            self._requests -= 1
            self._bytes -= size
            self._answers[(method, status, error)] += 1

    def answers(self) -> dict[tuple[str, int | None, str | None], int]:
        with self._lock:
            return dict(self._answers)

    def in_flight(self) -> tuple[int, int]:
        """Requests, and bytes of their bodies, sent and not answered yet."""
        with self._lock:
            return self._requests, self._bytes


class Instruments:
    """The synchronous instruments, recorded per window, per resource of a window, per rate-limit
    wait; and the Reach traffic. A disabled set (``enabled`` false) returns at once."""

    def __init__(self, meter: Meter, *, enabled: bool) -> None:
        self.enabled = enabled
        self.reach = ReachTraffic()
        self._coalesced = [0, 0]  # triggers, entities of the finished windows
        self._window_size = meter.create_histogram(
            "reach_sync.window.size",
            unit="{entity}",
            description="Entities in a finished window (one per entity, however often it changed)",
            explicit_bucket_boundaries_advisory=WINDOW_SIZE_BUCKETS,
        )
        self._window_age = meter.create_histogram(
            "reach_sync.window.age",
            unit="s",
            description="From a window's first key to its outcome (retries included)",
            explicit_bucket_boundaries_advisory=WINDOW_AGE_BUCKETS_S,
        )
        self._window_triggers = meter.create_counter(
            "reach_sync.window.triggers",
            unit="{trigger}",
            description="Triggers behind the entities of finished windows (see coalescing.ratio)",
        )
        self._latency = meter.create_histogram(
            "reach_sync.commit_to_accept.duration",
            unit="s",
            description="Source commit to the outcome of the entity's window (accepted, skipped,"
            " deleted, dead-lettered); up to 64 entities per window, evenly spaced beyond",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._recompute = meter.create_histogram(
            "reach_sync.recompute.duration",
            unit="s",
            description="One recompute query (one per resource per window)",
            explicit_bucket_boundaries_advisory=QUERY_BUCKETS_S,
        )
        self._rows = meter.create_counter(
            "reach_sync.recompute.rows",
            unit="{row}",
            description="Rows recompute queries returned (an entity without a row is deleted)",
        )
        self._records = meter.create_counter(
            "reach_sync.records.sent",
            unit="{record}",
            description="Recomputed records by outcome: accepted, parked (accepted, held by Reach"
            " for a missing $ref), skipped (unchanged), deleted, dead_lettered (with Reach's"
            " status when it answered one), held (tenant refused; per attempt)",
        )
        self._waits = meter.create_histogram(
            "reach_sync.rate_limit.wait.duration",
            unit="s",
            description="Requests that waited for a rate-limit pause or token, and how long",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS_S,
        )
        meter.create_observable_counter(
            "reach_sync.reach.requests",
            [self._observe_answers],
            unit="{request}",
            description="Reach requests answered, by method and status (error.type: no answer)",
        )
        meter.create_observable_up_down_counter(
            "reach_sync.reach.in_flight.requests",
            [lambda _: [Observation(self.reach.in_flight()[0])]],
            unit="{request}",
            description="Reach requests sent and not answered yet",
        )
        meter.create_observable_up_down_counter(
            "reach_sync.reach.in_flight.body_size",
            [lambda _: [Observation(self.reach.in_flight()[1])]],
            unit="By",
            description="Bytes of the bodies of Reach requests sent and not answered yet",
        )
        meter.create_observable_gauge(
            "reach_sync.coalescing.ratio",
            [self._observe_coalescing],
            unit="1",
            description="Triggers per entity recomputed, over the finished windows since start",
        )

    def window_finished(self, window: Window, latencies_ms: Sequence[int]) -> None:
        """A window reached its outcome: its size and age, its coalescing, and the commit →
        accepted latencies of its entities (``latencies_ms``, at most one per entity)."""
        if not self.enabled:
            return
        self._window_size.record(len(window))
        self._window_age.record(max(0.0, time.monotonic() - window.opened_at))
        self._window_triggers.add(window.received)
        self._coalesced[0] += window.received
        self._coalesced[1] += len(window)
        for latency_ms in spread(latencies_ms, LATENCY_SAMPLES_PER_WINDOW):
            self._latency.record(latency_ms / 1000)

    def recomputed(self, resource: str, seconds: float, rows: int) -> None:
        if not self.enabled:
            return
        attributes = {RESOURCE: resource}
        self._recompute.record(seconds, attributes)
        self._rows.add(rows, attributes)

    def delivered(self, resource: str, result: DeliveryResult) -> None:
        """One resource's share of a window: one add per outcome (and status) with records."""
        if not self.enabled:
            return
        outcomes = {
            "accepted": result.sent,
            "parked": result.parked,
            "skipped": result.skipped,
            "deleted": result.deleted,
            "held": sum(len(h.ids) for h in result.held),
        }
        for outcome, count in outcomes.items():
            if count:
                self._records.add(count, {RESOURCE: resource, OUTCOME: outcome})
        statuses = Counter(getattr(d.error, "status", None) for d in result.dead)
        for status, count in statuses.items():
            attributes: dict[str, str | int] = {RESOURCE: resource, OUTCOME: "dead_lettered"}
            if isinstance(status, int):
                attributes[STATUS] = status
            self._records.add(count, attributes)

    def rate_limit_waited(self, seconds: float) -> None:
        if self.enabled and seconds >= MIN_WAIT_S:
            self._waits.record(seconds)

    def _observe_answers(self, _: CallbackOptions) -> Iterable[Observation]:
        for (method, status, error), count in self.reach.answers().items():
            attributes: dict[str, str | int] = {METHOD: method}
            if status is not None:
                attributes[STATUS] = status
            if error is not None:
                attributes[ERROR] = error
            yield Observation(count, attributes)

    def _observe_coalescing(self, _: CallbackOptions) -> Iterable[Observation]:
        triggers, entities = self._coalesced
        if entities:
            yield Observation(triggers / entities)


def spread(values: Sequence[int], most: int) -> Sequence[int]:
    """``values`` if there are at most ``most``; else ``most`` evenly spaced order statistics of
    them (the smallest and the largest included), which keep their distribution's shape."""
    if len(values) <= most:
        return values
    ordered = sorted(values)
    step = (len(ordered) - 1) / (most - 1)
    return [ordered[round(i * step)] for i in range(most)]


# What a run records into when metrics are off: every call returns at once.
NO_INSTRUMENTS = Instruments(NoOpMeterProvider().get_meter(METER_NAME), enabled=False)


# --- the Reach transport and the stages' own counts ---------------------------------------------


def metered_transport(
    inner: httpx.AsyncBaseTransport, instruments: Instruments
) -> httpx.AsyncBaseTransport:
    """``inner``, counted into ``instruments``; ``inner`` itself when they are off."""
    if not instruments.enabled:
        return inner
    # Imported here: the transport is an httpx one, which only a process that talks to Reach
    # loads (not a router-only one, which imports this module for its own counts).
    from consumer.observe.metered_transport import MeteredTransport

    return MeteredTransport(inner, instruments.reach)
