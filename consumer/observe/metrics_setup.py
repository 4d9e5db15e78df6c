"""Starting a run's metrics: which readers (Prometheus on the health port, OTLP, console) from
the standard ``OTEL_*`` variables, and the asynchronous instruments over what the stages count
already. The handle holds the run's instruments (metrics.py) and its Prometheus exposition.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation
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

from consumer.observe.metrics import (
    EVENT_KIND,
    METER_NAME,
    NO_INSTRUMENTS,
    PARTITION,
    STAGE,
    TOPIC,
    Instruments,
)

__all__ = ["MetricsHandle", "RunStats", "exporters_from_env", "start_metrics"]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "reach-sync"
# What shutdown gives a push exporter to send its last export.
SHUTDOWN_TIMEOUT_MS = 5000
Exporter = Literal["prometheus", "otlp", "console"]
_EXPORTERS: tuple[Exporter, ...] = ("prometheus", "otlp", "console")

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
            "reach_sync.schema_registry.unavailable",
            [self.router_value("registry_unavailable")],
            unit="{batch}",
            description="Router batches routed again because the schema registry could not"
            " answer (Avro; nothing is dead-lettered for it)",
        )
        counter(
            "reach_sync.events.unknown_schema_id",
            [self.router_value("unknown_schema_ids")],
            unit="{event}",
            description="Avro events whose schema id the registry does not know, dead-lettered",
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
