"""Tracing setup: a TracerProvider from the standard ``OTEL_*`` variables, once per process.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``console``, ``otlp`` over HTTP): then no
provider exists, spans.py returns the invalid span at once and no client is instrumented, so
the hot path pays nothing. When on, the Reach client (httpx) and the dedup store (redis) are
instrumented; the recompute and the window are spanned by hand (spans.py), Kafka never per
message. Every exported span goes through the logs' redaction. reach-sync's spans use the
provider held here, never the API's global one. Why each choice: docs/operations.md, "Tracing".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, Status
from opentelemetry.util.types import Attributes, AttributeValue

from consumer import __version__
from consumer.errors import ConfigurationError
from consumer.observe.logs import Redactor

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Tracing",
    "enabled",
    "exporters_from",
    "instrument_http",
    "instrument_redis",
    "resource",
    "start_tracing",
    "stop_tracing",
    "tracer",
]

log = logging.getLogger(__name__)

TRACER_NAME = "reach-sync"
DEFAULT_SERVICE_NAME = "reach-sync"
_EXPORTERS = ("console", "otlp")
SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
_HTTP_PROTOCOLS = ("http/protobuf", "")


@dataclass
class Tracing:
    """The installed provider; ``shutdown`` exports what is still buffered, then stops."""

    provider: TracerProvider

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        stop_tracing(self)


_tracing: Tracing | None = None
_tracer: trace.Tracer = trace.NoOpTracer()


def start_tracing(
    secrets: Iterable[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
) -> Tracing | None:
    """Install a provider as the environment says (module docstring); None when tracing is off.

    ``secrets`` are redacted from every exported span, as from the logs. ``exporter`` is the
    test seam: spans go there (still redacted, still batched) whatever the environment says.
    Raises ConfigurationError for an exporter or OTLP protocol reach-sync does not ship.
    """
    global _tracing, _tracer
    env = os.environ if environ is None else environ
    exporters = [exporter] if exporter is not None else exporters_from(env)
    if not exporters:
        return None
    # The instrumentations name HTTP attributes after the stable conventions
    # (http.request.method, url.full, http.response.status_code) only when asked; read once, at
    # the first instrumentation, so set before any. An operator's own choice stands.
    os.environ.setdefault(SEMCONV_OPT_IN, "http")
    provider = TracerProvider(resource=resource())
    redactor = Redactor(secrets)
    for chosen in exporters:
        provider.add_span_processor(BatchSpanProcessor(RedactingExporter(chosen, redactor)))
    if _tracing is not None:
        stop_tracing(_tracing)
    _tracing = Tracing(provider)
    _tracer = provider.get_tracer(TRACER_NAME, __version__)
    log.info("tracing on: exporting to %s", ", ".join(type(e).__name__ for e in exporters))
    return _tracing


def stop_tracing(tracing: Tracing | None = None) -> None:
    """Flush and shut down ``tracing`` (default: the installed one); spans started later are
    no-ops again."""
    global _tracing, _tracer
    tracing = tracing or _tracing
    if tracing is None:
        return
    if tracing is _tracing:
        _tracing, _tracer = None, trace.NoOpTracer()
    tracing.provider.shutdown()


def enabled() -> bool:
    return _tracing is not None


def tracer() -> trace.Tracer:
    """reach-sync's tracer: the installed provider's, else a no-op one."""
    return _tracer


def exporters_from(env: Mapping[str, str]) -> list[SpanExporter]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    unknown = sorted(set(names) - set(_EXPORTERS))
    if unknown:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not supported"
            f" (none, {', '.join(_EXPORTERS)})"
        )
    exporters: list[SpanExporter] = []
    for name in dict.fromkeys(names):
        exporters.append(ConsoleSpanExporter() if name == "console" else _otlp(env))
    return exporters


def _otlp(env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if protocol not in _HTTP_PROTOCOLS:
        raise ConfigurationError(
            f"OTLP protocol {protocol!r} is not supported: reach-sync exports traces over"
            " http/protobuf (set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def resource() -> Resource:
    """From OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the service is reach-sync when they
    name none."""
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


# --- instrumentation ----------------------------------------------------------------------------


def instrument_http(client: httpx.AsyncClient) -> None:
    """A CLIENT span per request of ``client`` (the Reach client), when tracing is on.

    The instrumentation's HTTP metrics go to a no-op meter: reach-sync's metrics are its own
    (metrics.py), and a second, unasked-for histogram per request is CPU on the hot path.
    """
    if _tracing is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(
        client,
        tracer_provider=_tracing.provider,
        meter_provider=NoOpMeterProvider(),
        request_hook=_reach_tenant,
    )


async def _reach_tenant(span: trace.Span, request: Any) -> None:
    """The Reach tenant a request is for (a merchant's id; never the credential)."""
    tenant = request.headers.get("reach-tenant-id")
    if tenant is not None and span.is_recording():
        span.set_attribute("reach.tenant", tenant)


def instrument_redis(client: Any) -> None:
    """A CLIENT span per Redis command of ``client`` (the dedup store), when tracing is on."""
    if _tracing is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=_tracing.provider)


# --- redaction ----------------------------------------------------------------------------------


class RedactingExporter(SpanExporter):
    """Hands spans to ``inner`` with every string in their attributes, events, links and status
    redacted like a log line; a span with nothing to redact is passed on as it is."""

    def __init__(self, inner: SpanExporter, redactor: Redactor) -> None:
        self._inner = inner
        self._redactor = redactor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([self._redacted(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def _redacted(self, span: ReadableSpan) -> ReadableSpan:
        attributes = self._clean(span.attributes)
        events = [(e, self._clean(e.attributes)) for e in span.events]
        links = [(link, self._clean(link.attributes)) for link in span.links]
        status = span.status
        if status.description:
            redacted = self._redactor.redact(status.description)
            if redacted != status.description:
                status = Status(status.status_code, redacted)
        unchanged = (
            attributes is None
            and status is span.status
            and all(clean is None for _, clean in events)
            and all(clean is None for _, clean in links)
        )
        if unchanged:
            return span
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes if attributes is None else attributes,
            events=[
                Event(e.name, e.attributes if c is None else c, e.timestamp) for e, c in events
            ],
            links=[Link(k.context, k.attributes if c is None else c) for k, c in links],
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def _clean(self, attributes: Attributes) -> dict[str, AttributeValue] | None:
        """A redacted copy of ``attributes``; None when nothing in them needed redacting."""
        if not attributes:
            return None
        cleaned: dict[str, AttributeValue] = {}
        changed = False
        for key, value in attributes.items():
            new = self._value(value)
            changed = changed or new is not value
            cleaned[key] = new
        return cleaned if changed else None

    def _value(self, value: AttributeValue) -> AttributeValue:
        if isinstance(value, str):
            redacted = self._redactor.redact(value)
            return value if redacted == value else redacted
        if isinstance(value, Sequence) and value and isinstance(value[0], str):
            items = [self._redactor.redact(str(v)) for v in value]
            return value if items == list(value) else tuple(items)
        return value
