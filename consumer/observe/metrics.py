"""OpenTelemetry metrics: what the pipeline did, for Prometheus (``/metrics``) and OTLP.

``start_metrics`` is called once per service run; its handle holds the run's ``instruments``,
which the service passes to what records (the syncer, its window sink, the rate limiter, the
Reach transport), and its Prometheus ``exposition``. When nothing would read them the
instruments are ``NO_INSTRUMENTS``, whose methods return at once, so recording costs (almost)
nothing.

Where a reader is attached (``exporters_from_env``): a Prometheus reader whenever the definition
has a ``health`` port (``/metrics`` is served there; a reader costs nothing until a scrape
collects), plus OTLP over HTTP and/or the console when ``OTEL_METRICS_EXPORTER`` names them;
``OTEL_METRICS_EXPORTER=none`` (or ``OTEL_SDK_DISABLED=true``) turns everything off. The OTLP
exporter and the export interval read the standard ``OTEL_EXPORTER_OTLP_*`` and
``OTEL_METRIC_EXPORT_*`` variables.

Cost decides how each number is recorded. The router handles ~30k events/s and the syncer ~12k
entities/s, and one call into the SDK costs several microseconds, so nothing is recorded per
event or per record:

- what the stages already count (``RouterStats``, ``SyncerStats``) is read by asynchronous
  instruments when a reader collects; the counts agree with the stats by construction;
- what needs attributes or a distribution is recorded once per window, per resource of a window,
  per rate-limit wait or per Reach request, into synchronous instruments;
- the commit → accepted latency is per entity: a window records every entity's latency up to
  ``LATENCY_SAMPLES_PER_WINDOW``, and beyond that evenly spaced order statistics of them (exact
  at a steady load, where the latency matters; a backlog's big windows are sampled);
- gauges (consumer lag per partition, requests and bytes in flight, held entities) are read at
  collection from copies made for other threads: a collection runs on the scrape or export
  thread, which never calls into a Kafka consumer (observe/progress.py says why).

Attributes stay bounded: a resource of the definition, a stage, an outcome, an HTTP status or
error class, a partition. Never a tenant or an entity id.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

from consumer import __version__
from consumer.errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from consumer.config import SyncDefinition
    from consumer.observe.progress import ProgressTracker
    from consumer.sink.delivery import DeliveryResult
    from consumer.syncer.windows import Window

__all__ = [
    "LATENCY_SAMPLES_PER_WINDOW",
    "NO_INSTRUMENTS",
    "Instruments",
    "MetricsHandle",
    "exporters_from_env",
    "metered_transport",
    "start_metrics",
]

log = logging.getLogger(__name__)

METER_NAME = "reach_sync"
DEFAULT_SERVICE_NAME = "reach-sync"
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
# What shutdown gives a push exporter to send its last export.
SHUTDOWN_TIMEOUT_MS = 5000

Exporter = Literal["prometheus", "otlp", "console"]
_EXPORTERS: tuple[Exporter, ...] = ("prometheus", "otlp", "console")

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


class _MeteredTransport(httpx.AsyncBaseTransport):
    """Counts each request and its answer, and what is in flight, around the real transport
    (inside the circuit breaker: a request the open circuit refuses never reaches here)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, traffic: ReachTraffic) -> None:
        self._inner = inner
        self._traffic = traffic

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        size = int(request.headers.get("content-length") or 0)
        self._traffic.started(size)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            self._traffic.finished(size, request.method, None, type(exc).__name__)
            raise
        self._traffic.finished(size, request.method, response.status_code, None)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def metered_transport(
    inner: httpx.AsyncBaseTransport, instruments: Instruments
) -> httpx.AsyncBaseTransport:
    """``inner``, counted into ``instruments``; ``inner`` itself when they are off."""
    return _MeteredTransport(inner, instruments.reach) if instruments.enabled else inner


Callback = Callable[[CallbackOptions], Iterable[Observation]]


class RunStats(Protocol):
    """What a service run counts (``service.ServiceStats``), read by field name: the router's
    latest snapshot (None before its first batch) and the syncer's counters."""

    @property
    def router(self) -> Any: ...

    @property
    def syncer(self) -> Any: ...


@dataclass(frozen=True)
class _StageCounts:
    """Asynchronous instruments over what the stages count already (see the module docstring).
    ``stats.router`` is a snapshot the router replaces after each batch; the syncer's counters
    are plain ints its loop increments: both are safe to read from the collecting thread."""

    stats: RunStats
    router: bool
    syncer: bool
    lag: Sequence[ProgressTracker]

    def router_value(self, field: str) -> Callback:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            found = self.stats.router
            if self.router and found is not None:
                yield Observation(getattr(found, field))

        return observe

    def syncer_value(self, field: str) -> Callback:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            if self.syncer:
                yield Observation(getattr(self.stats.syncer, field))

        return observe

    def by_stage(self, field: str) -> Callback:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            found = self.stats.router
            if self.router and found is not None:
                yield Observation(getattr(found, field), {STAGE: "router"})
            if self.syncer:
                yield Observation(getattr(self.stats.syncer, field), {STAGE: "syncer"})

        return observe

    def decoded(self, _: CallbackOptions) -> Iterable[Observation]:
        found = self.stats.router
        if self.router and found is not None:
            yield Observation(found.changes, {EVENT_KIND: "change"})
            for reason, count in sorted(found.ignored.items()):
                yield Observation(count, {EVENT_KIND: reason})

    def consumer_lag(self, _: CallbackOptions) -> Iterable[Observation]:
        for tracker in self.lag:
            view = tracker.view()
            for p in view.partitions:
                attributes = {STAGE: view.name, TOPIC: p.topic, PARTITION: str(p.partition)}
                yield Observation(p.lag, attributes)

    def register(self, meter: Meter) -> None:
        counter, updown = meter.create_observable_counter, meter.create_observable_up_down_counter
        counter(
            "reach_sync.events.consumed",
            [self.router_value("events")],
            unit="{event}",
            description="Change events the router read from the source topics",
        )
        counter(
            "reach_sync.events.decoded",
            [self.decoded],
            unit="{event}",
            description="Events decoded, by kind: a change, or why it was skipped (heartbeat, ...)",
        )
        counter(
            "reach_sync.events.decode_errors",
            [self.router_value("dead_lettered")],
            unit="{event}",
            description="Events the router could not use (undecodable, no trigger, no usable id),"
            " dead-lettered",
        )
        counter(
            "reach_sync.dirty_keys.produced",
            [self.router_value("dirty_keys")],
            unit="{key}",
            description="Dirty keys the router produced (an entity once per batch)",
        )
        counter(
            "reach_sync.dirty_keys.consumed",
            [self.syncer_value("dirty_keys")],
            unit="{key}",
            description="Dirty keys the syncer read into windows",
        )
        counter(
            "reach_sync.dead_letters",
            [self.by_stage("dead_lettered")],
            unit="{message}",
            description="Dead letters produced: router, unusable events; syncer, records Reach"
            " refused and undecodable dirty keys",
        )
        counter(
            "reach_sync.retries",
            [self.by_stage("retries")],
            unit="{retry}",
            description="Router batches routed again; syncer windows retried",
        )
        updown(
            "reach_sync.held",
            [self.syncer_value("held")],
            unit="{entity}",
            description="Entities held for tenants Reach refuses, now",
        )
        updown(
            "reach_sync.in_flight.keys",
            [self.syncer_value("in_flight")],
            unit="{key}",
            description="Dirty keys read and not done yet (open, running and failed windows,"
            " held entities): what the process-wide in-flight bound counts",
        )
        updown(
            "reach_sync.in_flight.size",
            [self.syncer_value("in_flight_bytes")],
            unit="By",
            description="Bytes of the dirty keys in flight, as the in-flight bound counts them",
        )
        updown(
            "reach_sync.blocked_tenants",
            [self.syncer_value("blocked_tenants")],
            unit="{tenant}",
            description="Tenants Reach refuses (401/403), now",
        )
        meter.create_observable_gauge(
            "reach_sync.consumer.lag",
            [self.consumer_lag],
            unit="{message}",
            description="Per assigned partition: its high watermark minus where its stage got"
            " (as /readyz computes it; needs the health section)",
        )


# --- setup --------------------------------------------------------------------------------------


def exporters_from_env(env: Mapping[str, str], health_port: bool) -> set[Exporter]:
    """Which readers to attach: Prometheus when there is a health port to serve it, plus those
    ``OTEL_METRICS_EXPORTER`` names (comma-separated: ``otlp``, ``console``, ``prometheus``);
    ``none`` there, or ``OTEL_SDK_DISABLED=true``, turns everything off. Raises
    ConfigurationError for an exporter reach-sync does not ship (as tracing does)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return set()
    names = {n.strip().lower() for n in env.get("OTEL_METRICS_EXPORTER", "").split(",")}
    names.discard("")
    if "none" in names:
        return set()
    unknown = sorted(names - set(_EXPORTERS))
    if unknown:
        raise ConfigurationError(
            f"OTEL_METRICS_EXPORTER: {', '.join(unknown)} not supported"
            f" (none, {', '.join(_EXPORTERS)})"
        )
    chosen: set[Exporter] = {e for e in _EXPORTERS if e in names}
    if health_port:
        chosen.add("prometheus")
    elif "prometheus" in chosen:
        log.warning("metrics: no health section in the definition, so no /metrics to scrape")
        chosen.discard("prometheus")
    if "otlp" in chosen:
        _check_otlp_protocol(env)
    return chosen


def _check_otlp_protocol(env: Mapping[str, str]) -> None:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if protocol not in ("", "http/protobuf"):
        raise ConfigurationError(
            f"OTLP protocol {protocol!r} is not supported: reach-sync exports metrics over"
            " http/protobuf (set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, port 4318)"
        )


def _push_reader(exporter: Exporter) -> MetricReader:
    """A reader that exports every OTEL_METRIC_EXPORT_INTERVAL ms (default 60 s)."""
    if exporter == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _resource() -> Resource:
    """From OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the service is reach-sync when they
    name none (as tracing's, telemetry.py)."""
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


@dataclass
class MetricsHandle:
    """One service run's metrics: the instruments its stages record into, its Prometheus
    registry (``exposition``); ``shutdown`` sends a push exporter's last export."""

    provider: MeterProvider | None = None
    instruments: Instruments = NO_INSTRUMENTS
    registry: CollectorRegistry | None = None

    def exposition(self) -> tuple[bytes, str] | None:
        """The metrics in Prometheus' text format, and its content type; None when no
        Prometheus reader is attached. Runs the asynchronous instruments' callbacks."""
        if self.registry is None:
            return None
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        if self.provider is None:
            return
        self.instruments, self.registry = NO_INSTRUMENTS, None
        self.provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT_MS)
        self.provider = None


def start_metrics(
    definition: SyncDefinition,
    stats: RunStats,
    *,
    role: Literal["all", "router", "syncer"] = "all",
    lag: Sequence[ProgressTracker | None] = (),
    env: Mapping[str, str] | None = None,
    readers: Sequence[MetricReader] = (),
) -> MetricsHandle:
    """Start recording for one service run, once, before its stages start: the readers
    ``exporters_from_env`` chooses (plus ``readers``, for tests); nothing at all without any.
    ``lag`` are the stages' progress trackers (readiness's), for the consumer lag."""
    env = os.environ if env is None else env
    chosen = exporters_from_env(env, definition.health is not None)
    attached = list(readers)
    registry = None
    if "prometheus" in chosen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        # A registry of its own, not the process-wide default: another run in this process
        # (tests) must not register the same names twice.
        registry = CollectorRegistry()
        attached.append(PrometheusMetricReader(registry=registry, scope_info_enabled=False))
    attached += [_push_reader(e) for e in sorted(chosen - {"prometheus"})]
    if not attached:
        return MetricsHandle()
    provider = MeterProvider(attached, resource=_resource(), shutdown_on_exit=False)
    meter = provider.get_meter(METER_NAME)
    found = Instruments(meter, enabled=True)
    trackers = [t for t in lag if t is not None]
    _StageCounts(stats, role in ("all", "router"), role in ("all", "syncer"), trackers).register(
        meter
    )
    log.info("metrics: %s", ", ".join(sorted(chosen)) or "test readers only")
    return MetricsHandle(provider, found, registry)
