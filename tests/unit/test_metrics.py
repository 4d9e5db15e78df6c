"""Metrics (consumer/observe/metrics.py): what each recording point records, what the asynchronous
instruments read from the stages' counts, which readers the environment attaches, and the
Prometheus text the health port serves. An InMemoryMetricReader collects; no server runs."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from prometheus_client.parser import text_string_to_metric_families

from consumer.config import HealthSettings, SyncDefinition
from consumer.errors import BadRecord, ConfigurationError
from consumer.observe.metrics import LATENCY_SAMPLES_PER_WINDOW, metered_transport, spread
from consumer.observe.metrics_setup import MetricsHandle, exporters_from_env, start_metrics
from consumer.observe.progress import PartitionProgress, ProgressTracker
from consumer.reach.client import RequestInfo
from consumer.reach.limits import RequestLimiter
from consumer.router.dirty import Cause, DirtyKey
from consumer.router.loop import RouterStats
from consumer.service import ServiceStats
from consumer.sink.delivery import DeadLetter, DeliveryResult, Held
from consumer.syncer.windows import Window
from tests.shop_definition import shop_definition

Point = NumberDataPoint | HistogramDataPoint


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def stats() -> ServiceStats:
    return ServiceStats()


@pytest.fixture
def running(
    reader: InMemoryMetricReader, stats: ServiceStats
) -> Iterator[tuple[InMemoryMetricReader, ServiceStats, MetricsHandle]]:
    """Metrics of a service without a health port, collected by ``reader`` alone."""
    handle = start_metrics(shop_definition(), stats, env={}, readers=[reader])
    try:
        yield reader, stats, handle
    finally:
        handle.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, list[Point]]:
    """Every data point by metric name."""
    found: dict[str, list[Point]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)  # type: ignore[arg-type]
    return found


def values(points: list[Point]) -> dict[frozenset[tuple[str, Any]], float]:
    """A counter's or gauge's value per attribute set."""
    found: dict[frozenset[tuple[str, Any]], float] = {}
    for p in points:
        assert isinstance(p, NumberDataPoint)
        found[frozenset((p.attributes or {}).items())] = p.value
    return found


def attrs(**pairs: Any) -> frozenset[tuple[str, Any]]:
    return frozenset((k.replace("__", "."), v) for k, v in pairs.items())


def histogram(points: list[Point]) -> HistogramDataPoint:
    (point,) = points
    assert isinstance(point, HistogramDataPoint)
    return point


def _window(entities: int, triggers_each: int, opened_s_ago: float) -> Window:
    window = Window(opened_at=time.monotonic() - opened_s_ago, due_after_s=0.5)
    for n in range(entities):
        cause = Cause(kind="cdc", table="public.customers", op="u", source_ts_ms=1)
        window.add(DirtyKey("customers", n, cause, 0, triggers_each), n, 0.5)
    return window


# --- recording points --------------------------------------------------------------------------


def test_a_finished_window_records_its_size_age_coalescing_and_latencies(
    running: tuple[InMemoryMetricReader, ServiceStats, MetricsHandle],
) -> None:
    reader, _, handle = running
    handle.instruments.window_finished(_window(2, 3, opened_s_ago=1.5), [100, 250, 2000])
    handle.instruments.window_finished(_window(4, 1, opened_s_ago=0.2), [])
    found = collect(reader)

    size = histogram(found["reach_sync.window.size"])
    assert (size.count, size.sum) == (2, 6)
    age = histogram(found["reach_sync.window.age"])
    assert age.count == 2 and 1.7 <= age.sum < 3.0
    assert values(found["reach_sync.window.triggers"]) == {attrs(): 10}
    # 10 triggers behind 6 entities.
    assert values(found["reach_sync.coalescing.ratio"]) == {attrs(): pytest.approx(10 / 6)}
    latency = histogram(found["reach_sync.commit_to_accept.duration"])
    assert (latency.count, latency.sum) == (3, pytest.approx(2.35))
    assert latency.explicit_bounds[0] == 0.05 and latency.explicit_bounds[-1] == 60.0
    # 0.1 s and 0.25 s (bucket bounds are inclusive above), and 2 s.
    assert list(latency.bucket_counts[:7]) == [0, 1, 1, 0, 0, 1, 0]


def test_a_big_window_records_evenly_spaced_latencies_and_a_small_one_all() -> None:
    assert spread([5, 1, 3], 64) == [5, 1, 3]
    many = list(range(1000, 0, -1))
    picked = spread(many, LATENCY_SAMPLES_PER_WINDOW)
    assert len(picked) == LATENCY_SAMPLES_PER_WINDOW
    assert (picked[0], picked[-1]) == (1, 1000)  # the extremes are kept
    assert picked == sorted(picked)
    steps = {b - a for a, b in itertools.pairwise(picked)}
    assert steps <= {15, 16, 17}


def test_delivery_outcomes_are_counted_per_resource_with_the_status_of_refusals(
    running: tuple[InMemoryMetricReader, ServiceStats, MetricsHandle],
) -> None:
    reader, _, handle = running
    result = DeliveryResult(sent=3, skipped=2, deleted=1, parked=1)
    result.dead += [
        DeadLetter("customers", "1", "m-1", BadRecord("bad", status=422)),
        DeadLetter("customers", "2", "m-1", BadRecord("bad", status=422)),
        DeadLetter("customers", "3", "m-1", BadRecord("failed in a batch")),
    ]
    result.held.append(Held("customers", "m-2", ("4", "5"), ConfigurationError("403")))
    handle.instruments.delivered("customers", result)
    handle.instruments.delivered("transactions", DeliveryResult(sent=4))
    handle.instruments.recomputed("customers", 0.02, 11)
    found = collect(reader)

    def outcome(resource: str, name: str, **more: Any) -> frozenset[tuple[str, Any]]:
        return attrs(reach_sync__resource=resource, reach_sync__outcome=name, **more)

    assert values(found["reach_sync.records.sent"]) == {
        outcome("customers", "accepted"): 3,
        outcome("customers", "skipped"): 2,
        outcome("customers", "deleted"): 1,
        outcome("customers", "parked"): 1,
        outcome("customers", "held"): 2,
        outcome("customers", "dead_lettered", http__response__status_code=422): 2,
        outcome("customers", "dead_lettered"): 1,
        outcome("transactions", "accepted"): 4,
    }
    query = found["reach_sync.recompute.duration"]
    assert histogram(query).sum == pytest.approx(0.02)
    assert values(found["reach_sync.recompute.rows"]) == {
        attrs(reach_sync__resource="customers"): 11
    }


async def test_the_reach_transport_counts_answers_by_status_and_what_is_in_flight(
    running: tuple[InMemoryMetricReader, ServiceStats, MetricsHandle],
) -> None:
    reader, _, handle = running
    seen_in_flight: list[tuple[int, int]] = []

    async def reach(request: httpx.Request) -> httpx.Response:
        seen_in_flight.append(handle.instruments.reach.in_flight())
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(429 if request.url.path == "/slow" else 200)

    transport = metered_transport(httpx.MockTransport(reach), handle.instruments)
    async with httpx.AsyncClient(transport=transport, base_url="http://reach") as client:
        await client.post("/ok", content=b"x" * 100)
        await client.get("/slow")
        with pytest.raises(httpx.ConnectError):
            await client.get("/down")
    assert seen_in_flight == [(1, 100), (1, 0), (1, 0)]
    found = collect(reader)
    assert values(found["reach_sync.reach.requests"]) == {
        attrs(http__request__method="POST", http__response__status_code=200): 1,
        attrs(http__request__method="GET", http__response__status_code=429): 1,
        attrs(http__request__method="GET", error__type="ConnectError"): 1,
    }
    assert values(found["reach_sync.reach.in_flight.requests"]) == {attrs(): 0}
    assert values(found["reach_sync.reach.in_flight.body_size"]) == {attrs(): 0}


async def test_a_rate_limit_wait_is_recorded_and_a_request_that_did_not_wait_is_not(
    running: tuple[InMemoryMetricReader, ServiceStats, MetricsHandle],
) -> None:
    reader, _, handle = running
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RequestLimiter(
        None, clock=lambda: now[0], sleep=sleep, instruments=handle.instruments
    )
    request = RequestInfo("m-1", "upsert_one", 1)
    await limiter.before_request(request)  # nothing to wait for
    limiter.after_response(request, httpx.Response(429, headers={"Retry-After": "2"}))
    await limiter.before_request(request)  # paused 2 s (on the fake clock)
    waits = histogram(collect(reader)["reach_sync.rate_limit.wait.duration"])
    assert (waits.count, waits.sum) == (1, pytest.approx(2.0))


# --- the stages' own counts, read at collection ------------------------------------------------


def test_the_stages_counts_and_each_partitions_lag_are_read_when_collected(
    reader: InMemoryMetricReader, stats: ServiceStats
) -> None:
    syncer_progress = ProgressTracker("syncer")
    handle = start_metrics(
        shop_definition(), stats, env={}, readers=[reader], lag=[None, syncer_progress]
    )
    try:
        stats.router = RouterStats(
            events=10,
            changes=7,
            ignored=Counter({"heartbeat": 2}),
            dirty_keys=5,
            dead_lettered=1,
            retries=1,
        )
        syncer = stats.syncer
        syncer.dirty_keys, syncer.dead_lettered, syncer.retries = 4, 2, 3
        syncer.held, syncer.blocked_tenants = 6, 1
        syncer.in_flight, syncer.in_flight_bytes = 40, 4096
        syncer_progress.observe(
            [PartitionProgress("t.dirty", 0, 10, 15), PartitionProgress("t.dirty", 1, 7, 7)],
            time.monotonic(),
        )
        found = collect(reader)
    finally:
        handle.shutdown()

    def one(name: str) -> float:
        (value,) = values(found[name]).values()
        return value

    assert one("reach_sync.events.consumed") == 10
    assert values(found["reach_sync.events.decoded"]) == {
        attrs(reach_sync__event__kind="change"): 7,
        attrs(reach_sync__event__kind="heartbeat"): 2,
    }
    assert one("reach_sync.events.decode_errors") == 1
    assert one("reach_sync.dirty_keys.produced") == 5
    assert one("reach_sync.dirty_keys.consumed") == 4
    assert values(found["reach_sync.dead_letters"]) == {
        attrs(reach_sync__stage="router"): 1,
        attrs(reach_sync__stage="syncer"): 2,
    }
    assert values(found["reach_sync.retries"]) == {
        attrs(reach_sync__stage="router"): 1,
        attrs(reach_sync__stage="syncer"): 3,
    }
    assert (one("reach_sync.held"), one("reach_sync.blocked_tenants")) == (6, 1)
    assert (one("reach_sync.in_flight.keys"), one("reach_sync.in_flight.size")) == (40, 4096)
    lag = {
        (dict(k)["messaging.destination.partition.id"], dict(k)["reach_sync.stage"]): v
        for k, v in values(found["reach_sync.consumer.lag"]).items()
    }
    assert lag == {("0", "syncer"): 5, ("1", "syncer"): 0}


def test_a_router_alone_reports_no_syncer_counts(
    reader: InMemoryMetricReader, stats: ServiceStats
) -> None:
    handle = start_metrics(shop_definition(), stats, role="router", env={}, readers=[reader])
    try:
        stats.router = RouterStats(events=3, retries=2)
        found = collect(reader)
    finally:
        handle.shutdown()
    assert values(found["reach_sync.retries"]) == {attrs(reach_sync__stage="router"): 2}
    assert "reach_sync.dirty_keys.consumed" not in found


# --- which readers, and when none --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "health", "chosen"),
    [
        ({}, False, set()),
        ({}, True, {"prometheus"}),
        ({"OTEL_METRICS_EXPORTER": "otlp"}, False, {"otlp"}),
        ({"OTEL_METRICS_EXPORTER": "otlp, Console"}, True, {"otlp", "console", "prometheus"}),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, False, set()),  # nowhere to serve it
        ({"OTEL_METRICS_EXPORTER": "none"}, True, set()),
        ({"OTEL_METRICS_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, True, set()),
        (
            {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            False,
            {"otlp"},
        ),
    ],
)
def test_readers_are_chosen_by_the_health_port_and_otel_metrics_exporter(
    env: Mapping[str, str], health: bool, chosen: set[str]
) -> None:
    assert exporters_from_env(env, health) == chosen


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_METRICS_EXPORTER": "statsd"}, "statsd not supported"),
        (
            {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"},
            "protocol 'grpc' is not supported",
        ),
    ],
)
def test_an_exporter_reach_sync_does_not_ship_is_a_configuration_error(
    env: Mapping[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        exporters_from_env(env, False)


def test_without_any_reader_nothing_is_recorded_and_the_transport_is_not_wrapped(
    stats: ServiceStats,
) -> None:
    handle = start_metrics(shop_definition(), stats, env={})
    assert handle.provider is None and not handle.instruments.enabled
    inner = httpx.MockTransport(lambda request: httpx.Response(200))
    assert metered_transport(inner, handle.instruments) is inner
    handle.instruments.window_finished(_window(1, 1, 0.1), [5])  # returns at once
    assert handle.exposition() is None
    handle.shutdown()


# --- Prometheus' text ----------------------------------------------------------------------------


def _with_health(definition: SyncDefinition) -> SyncDefinition:
    return definition.model_copy(update={"health": HealthSettings(port=0)})


def test_with_a_health_port_the_prometheus_text_names_the_metrics_until_shutdown(
    stats: ServiceStats,
) -> None:
    handle: MetricsHandle = start_metrics(_with_health(shop_definition()), stats, env={})
    try:
        stats.router = RouterStats(events=12)
        handle.instruments.delivered("customers", DeliveryResult(sent=2, skipped=1))
        handle.instruments.window_finished(_window(2, 1, 0.3), [120, 80])
        found = handle.exposition()
        assert found is not None
        text, content_type = found
    finally:
        handle.shutdown()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    sent = {
        s.labels["reach_sync_outcome"]: s.value
        for s in families["reach_sync_records_sent"].samples
        if s.name == "reach_sync_records_sent_total"
    }
    assert sent == {"accepted": 2, "skipped": 1}
    assert families["reach_sync_events_consumed"].samples[0].value == 12
    latency = families["reach_sync_commit_to_accept_duration_seconds"]
    assert latency.type == "histogram"
    count = [s.value for s in latency.samples if s.name.endswith("_count")]
    assert count == [2]
    assert handle.exposition() is None  # shut down: /metrics answers 404 again
