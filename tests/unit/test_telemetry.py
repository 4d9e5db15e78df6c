"""Tracing setup from the OTEL_* variables, and the redaction every exported span goes through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from consumer.errors import ConfigurationError
from consumer.observe import telemetry
from consumer.observe.logs import MASK, Redactor

SECRET = "s3cret-value-42"
EMAIL = "ada.lovelace@example.org"


@pytest.fixture
def in_memory() -> Iterator[tuple[telemetry.Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = telemetry.start_tracing([SECRET], exporter=exporter)
    assert tracing is not None
    yield tracing, exporter
    telemetry.stop_tracing(tracing)


def test_tracing_is_off_without_an_exporter_and_spans_are_no_ops() -> None:
    for environ in ({}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "}):
        assert telemetry.start_tracing(environ=environ) is None
    assert not telemetry.enabled()
    with telemetry.tracer().start_as_current_span("window") as span:
        assert not span.is_recording()


def test_sdk_disabled_wins_over_an_exporter() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert telemetry.start_tracing(environ=environ) is None


def test_exporters_are_chosen_by_otel_traces_exporter() -> None:
    chosen = telemetry.exporters_from({"OTEL_TRACES_EXPORTER": "console, otlp,console"})
    assert [type(e) for e in chosen] == [ConsoleSpanExporter, OTLPSpanExporter]
    explicit = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert [type(e) for e in telemetry.exporters_from(explicit)] == [OTLPSpanExporter]


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "zipkin"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "grpc"),
    ],
)
def test_what_reach_sync_does_not_ship_is_a_configuration_error(
    environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        telemetry.start_tracing(environ=environ)
    assert not telemetry.enabled()


def test_the_service_is_reach_sync_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert telemetry.resource().attributes[SERVICE_NAME] == "reach-sync"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "reach-sync-eu")
    assert telemetry.resource().attributes[SERVICE_NAME] == "reach-sync-eu"


def test_an_installed_provider_records_and_stopping_flushes(
    in_memory: tuple[telemetry.Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = in_memory
    assert telemetry.enabled()
    with telemetry.tracer().start_as_current_span("window") as span:
        assert span.is_recording()
    telemetry.stop_tracing(tracing)  # the batch processor's buffer is exported on the way out
    assert [s.name for s in exporter.get_finished_spans()] == ["window"]
    assert not telemetry.enabled()


def _redacting() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    redacting = telemetry.RedactingExporter(exporter, Redactor([SECRET]))
    provider.add_span_processor(SimpleSpanProcessor(redacting))
    return provider, exporter


def test_secrets_credentials_and_emails_are_redacted_everywhere_in_a_span() -> None:
    provider, exporter = _redacting()
    other = SpanContext(0x1F, 0x2F, is_remote=True, trace_flags=TraceFlags(1))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "POST", links=[Link(other, {"note": f"from {EMAIL}"})]
    ) as span:
        span.set_attribute("http.request.header.authorization", [f"Bearer {SECRET}"])
        span.set_attribute("url.full", f"https://user:{SECRET}@reach.example/api")
        span.set_attribute("reach.tenant", "merchant-1")
        span.set_attribute("reach_sync.records", 3)
        span.add_event("exception", {"exception.message": f"refused {EMAIL} with {SECRET}"})
        span.set_status(Status(StatusCode.ERROR, f"BadRecord: {EMAIL}"))
    (exported,) = exporter.get_finished_spans()
    text = repr(
        (
            dict(exported.attributes or {}),
            [dict(e.attributes or {}) for e in exported.events],
            [dict(link.attributes or {}) for link in exported.links],
            exported.status.description,
        )
    )
    assert SECRET not in text and EMAIL not in text
    attributes = exported.attributes or {}
    assert attributes["http.request.header.authorization"] == (f"Bearer {MASK}",)
    assert attributes["url.full"] == f"https://user:{MASK}@reach.example/api"
    assert (attributes["reach.tenant"], attributes["reach_sync.records"]) == ("merchant-1", 3)
    assert exported.status.status_code is StatusCode.ERROR
    assert exported.links[0].context.trace_id == 0x1F  # what is not text is kept as it was
    assert (exported.context, exported.parent, exported.name) == (
        span.get_span_context(),
        None,
        "POST",
    )


def test_a_span_with_nothing_to_redact_is_passed_on_unchanged() -> None:
    exporter = InMemorySpanExporter()
    redacting = telemetry.RedactingExporter(exporter, Redactor([SECRET]))
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("dedup customers") as span:
        span.set_attribute("reach_sync.resource", "customers")
    readable: Any = span  # the SDK's span is a ReadableSpan once it has ended
    redacting.export([readable])
    assert exporter.get_finished_spans()[0] is readable
