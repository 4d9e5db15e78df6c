"""Metrics leave the process for real: Prometheus scrapes ``/metrics`` on the health port (the
service's own readiness wiring and HTTP server), and OTLP over HTTP posts them to a collector
(here a stdlib HTTP server that decodes the protobuf the exporter sends)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client.parser import text_string_to_metric_families

from consumer.config import HealthSettings
from consumer.observe.metrics_setup import start_metrics
from consumer.observe.progress import PartitionProgress
from consumer.observe.readiness import ServiceReadiness
from consumer.router.loop import RouterStats
from consumer.service import ServiceStats
from consumer.sink.delivery import DeliveryResult
from tests.shop_definition import shop_definition


def test_the_health_port_serves_prometheus_text_with_the_metrics() -> None:
    definition = shop_definition().model_copy(update={"health": HealthSettings(port=0)})
    assert definition.health is not None
    stats = ServiceStats()
    readiness = ServiceReadiness(definition.health, definition, "router", threading.Event())
    handle = start_metrics(definition, stats, role="router", lag=[readiness.router], env={})
    readiness.metrics = handle
    port = readiness.start()
    try:
        stats.router = RouterStats(events=42, changes=40, dirty_keys=30, dead_lettered=2)
        assert readiness.router is not None
        readiness.router.observe(
            [PartitionProgress("shop.public.customers", 3, 100, 125)], time.monotonic()
        )
        handle.instruments.delivered("customers", DeliveryResult(sent=5, skipped=2))
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics")
        # /healthz and /readyz still answer JSON beside it.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "alive"}
    finally:
        readiness.close()
        handle.shutdown()

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("reach_sync_events_consumed_total", ())] == 42
    assert samples[("reach_sync_events_decode_errors_total", ())] == 2
    assert samples[("reach_sync_dirty_keys_produced_total", ())] == 30
    lag_labels = (
        ("messaging_destination_name", "shop.public.customers"),
        ("messaging_destination_partition_id", "3"),
        ("reach_sync_stage", "router"),
    )
    assert samples[("reach_sync_consumer_lag", lag_labels)] == 25
    sent = (("reach_sync_outcome", "accepted"), ("reach_sync_resource", "customers"))
    assert samples[("reach_sync_records_sent_total", sent)] == 5
    assert families["target_info"].samples[0].labels["service_name"] == "reach-sync"


def test_without_metrics_the_health_port_has_no_metrics_route() -> None:
    settings = HealthSettings(port=0)
    readiness = ServiceReadiness(settings, shop_definition(), "router", threading.Event())
    port = readiness.start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        readiness.close()
    assert answer.status_code == 404


class _Collector:
    """An OTLP/HTTP metrics receiver: keeps each request it was posted, decoded."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/metrics":
                    received.append(ExportMetricsServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def collector() -> Iterator[_Collector]:
    found = _Collector()
    found.thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()


def test_otlp_exports_the_metrics_to_a_collector_at_shutdown(
    collector: _Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # only the final export
    stats = ServiceStats()
    handle = start_metrics(shop_definition(), stats)  # no health port: OTLP alone
    stats.syncer.dirty_keys = 9
    handle.instruments.delivered("transactions", DeliveryResult(sent=3, deleted=1))
    handle.shutdown()

    assert collector.requests, "nothing was exported"
    exported = {
        metric.name: metric
        for request in collector.requests
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    (consumed,) = exported["reach_sync.dirty_keys.consumed"].sum.data_points
    assert consumed.as_int == 9
    sent = {
        {a.key: a.value.string_value for a in p.attributes}["reach_sync.outcome"]: p.as_int
        for p in exported["reach_sync.records.sent"].sum.data_points
    }
    assert sent == {"accepted": 3, "deleted": 1}
    resource = collector.requests[0].resource_metrics[0].resource
    attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert attributes["service.name"] == "reach-sync"
