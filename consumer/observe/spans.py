"""The pipeline's spans: one trace per window, from its dirty keys to Reach's answers.

The root ``window <dirty topic>`` is a CONSUMER span; under it, per resource, ``recompute``,
``dedup`` and ``deliver``, under which the instrumentations' CLIENT spans (telemetry.py) of the
Reach requests and Redis writes. A window has no parent (its keys came from many events); it
links to its causes' ``traceparent`` contexts, at most MAX_LINKS.

Spans carry ids, counts, offsets and outcomes, never a record's values; a failure is recorded as
``error.type`` only. With tracing off every helper yields the invalid span without touching the
context: the hot path pays a function call. Why: docs/design.md, "Observability cost".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from consumer.config import SyncDefinition
from consumer.observe import telemetry
from consumer.router.dirty import Cause
from consumer.syncer.windows import Window

__all__ = [
    "MAX_LINKS",
    "links_from",
    "recompute_span",
    "span_failed",
    "stage_span",
    "traceparent_of",
    "window_span",
]

# Links of one window span: enough to find the producers of a window's first events; a backlog
# window of 1000 traced entities would otherwise carry 1000 links (and 8 times as many causes).
MAX_LINKS = 32
TRACEPARENT = "traceparent"
# A version-00 traceparent is 55 characters; later versions may append fields. Anything much
# longer is not one, and is not carried onto every dirty key.
_MAX_TRACEPARENT = 128

_propagator = TraceContextTextMapPropagator()
HeaderValue = str | bytes | None
KafkaHeaders = Mapping[str, HeaderValue] | Sequence[tuple[str, HeaderValue]]


def traceparent_of(headers: KafkaHeaders | None) -> str | None:
    """The ``traceparent`` header of a Kafka message, when its producer set one (checked for
    its W3C format only when a window links to it). A consumed message's headers are a list of
    pairs, or None when it has none: the common case costs one test."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        if key == TRACEPARENT and value is not None and len(value) <= _MAX_TRACEPARENT:
            if isinstance(value, str):
                return value if value.isascii() else None
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def links_from(causes: Iterable[Cause], limit: int = MAX_LINKS) -> list[Link]:
    """Links to the distinct valid trace contexts among ``causes``, at most ``limit``, each
    saying which source event carried it."""
    links: list[Link] = []
    seen: set[str] = set()
    for cause in causes:
        parent = cause.traceparent
        if parent is None or parent in seen:
            continue
        seen.add(parent)
        context = trace.get_current_span(_propagator.extract({TRACEPARENT: parent}))
        span_context = context.get_span_context()
        if not span_context.is_valid:
            continue
        links.append(Link(span_context, _cause_attributes(cause)))
        if len(links) >= limit:
            break
    return links


def _cause_attributes(cause: Cause) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"reach_sync.cause.kind": cause.kind}
    if cause.topic is not None:
        attributes["messaging.destination.name"] = cause.topic
    if cause.partition is not None:
        attributes["messaging.destination.partition.id"] = str(cause.partition)
    if cause.offset is not None:
        attributes["messaging.kafka.offset"] = cause.offset
    return attributes


@contextmanager
def window_span(
    definition: SyncDefinition, topic: str, partition: int, window: Window, attempt: int
) -> Iterator[Span]:
    """The span of one window's processing (``attempt``: 1 the first time, more on retries)."""
    if not telemetry.enabled():
        yield INVALID_SPAN
        return
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "window",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.consumer.group.name": f"{definition.source.kafka.group_id}.syncer",
        "reach_sync.window.first_offset": min(window.offsets.values(), default=-1),
        "reach_sync.window.end_offset": window.end_offset,
        "reach_sync.window.entities": len(window),
        "reach_sync.window.triggers": window.received,
        "reach_sync.window.resources": sorted(window.resources),
        "reach_sync.window.attempt": attempt,
    }
    links = links_from(c for causes in window.causes.values() for c in causes)
    with _span(f"window {topic}", SpanKind.CONSUMER, attributes, links) as span:
        yield span


@contextmanager
def stage_span(
    stage: str,
    resource: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """``<stage> <resource>`` (recompute, dedup, deliver) under the current span."""
    if not telemetry.enabled():
        yield INVALID_SPAN
        return
    named: dict[str, AttributeValue] = {"reach_sync.resource": resource, **(attributes or {})}
    with _span(f"{stage} {resource}", kind, named, ()) as span:
        yield span


def recompute_span(resource: str, entities: int) -> AbstractContextManager[Span]:
    """The one recompute query of a resource in a window: a database CLIENT span made by hand
    (telemetry.py says why not psycopg's instrumentation). No query text: the definition's
    SQL may hold literals, and the span says which resource it was."""
    if not telemetry.enabled():
        return nullcontext(INVALID_SPAN)
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "postgresql",
        "db.operation.name": "SELECT",
        "reach_sync.entities": entities,
    }
    return stage_span("recompute", resource, attributes, SpanKind.CLIENT)


def span_failed(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed by ``error``'s type only (module docstring)."""
    if span.is_recording():
        span.set_attribute("error.type", f"{type(error).__module__}.{type(error).__qualname__}")
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


@contextmanager
def _span(
    name: str, kind: SpanKind, attributes: dict[str, AttributeValue], links: Sequence[Link]
) -> Iterator[Span]:
    with telemetry.tracer().start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span_failed(span, exc)
            raise
