"""Traces on the whole pipeline, exported to memory (telemetry.start_tracing's test seam):

- a window is one trace, from its span down to the Reach requests it made, and it links to the
  trace context a producer put in a source event's ``traceparent`` header (router → dirty key →
  window span);
- a whole run, with a known Reach credential (JWT secret or static key) and customers with
  known e-mails and unmapped notes, leaves none of them in the logs or in any span, even with
  the Authorization header captured on purpose
  (``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST``).
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Message, Producer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from reach_devstack.stack import StackEndpoints

from consumer.config import SchemaRegistry
from consumer.config_file import load_definition
from consumer.observe import telemetry
from consumer.observe.logs import configure_logging, definition_secrets
from consumer.router.avro import RegistrySchemas
from consumer.router.debezium import Change, DecodeError
from consumer.router.formats import SourceDecoder
from tests.e2e.conftest import EXAMPLE, shop_env
from tests.e2e.helpers import (
    Sandbox,
    caught_up,
    insert_customer,
    pipeline_thread,
    read_topic,
    sql,
    wait_for,
)

SCHEMA = "shop_customers"
TOPIC = "shop.public.customers"
LANDS_S = 60.0


@pytest.fixture
def traced() -> Iterator[tuple[telemetry.Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = telemetry.start_tracing(exporter=exporter)
    assert tracing is not None
    try:
        yield tracing, exporter
    finally:
        telemetry.stop_tracing(tracing)


def _spans(tracing: telemetry.Tracing, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert tracing.force_flush()
    return list(exporter.get_finished_spans())


def _envelope(customer: int) -> bytes:
    """A Debezium update of one customer, as a producer other than Debezium could write it."""
    payload = {
        "before": None,
        "after": {"id": customer},
        "source": {"schema": "public", "table": "customers", "ts_ms": 1, "lsn": 1},
        "op": "u",
        "ts_ms": 1,
    }
    return json.dumps({"schema": {"type": "struct"}, "payload": payload}).encode()


def _debeziums_event(endpoints: StackEndpoints, customer: int) -> tuple[bytes | None, bytes]:
    """On an Avro stack: the embedded Debezium's own event of ``customer``, found by decoding
    the topic as the router does, to be produced again with a trace context."""
    registry = RegistrySchemas(
        SchemaRegistry.model_validate({"url": endpoints.schema_registry_url})
    )
    decoder = SourceDecoder("avro", registry)
    found: list[tuple[bytes | None, bytes]] = []

    def ours(messages: list[Message]) -> bool:
        for message in messages:
            try:
                change = decoder.decode(message.key(), message.value())
            except DecodeError:
                continue  # another test's bad events
            if isinstance(change, Change) and change.key == {"id": customer}:
                found.append((message.key(), message.value() or b""))
                return True
        return False

    try:
        read_topic(endpoints.bootstrap_servers, TOPIC, ours, timeout_s=LANDS_S)
    finally:
        registry.close()
    return found[0]


def _chain(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """Names from ``span`` up to its root, within its trace."""
    names = [span.name]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def test_a_window_is_one_trace_from_the_producers_link_to_the_reach_requests(
    shop_stack: StackEndpoints,
    unique: Callable[[str], str],
    traced: tuple[telemetry.Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = traced
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("traces")
    customer, tenant = insert_customer(dsn, 1, f"traced-{uuid.uuid4().hex[:8]}@example.com")
    producer_trace = secrets.token_hex(16)
    traceparent = f"00-{producer_trace}-{secrets.token_hex(8)}-01"

    with pipeline_thread(shop_stack, name) as running:
        caught_up(running, lambda: bool(sandbox.history(tenant, SCHEMA, str(customer))))
        # Reach has this state already: forget that, so the traced event's window sends it.
        store = redis.Redis.from_url(shop_stack.redis_url)
        assert store.delete(f"reach-sync:{name}:last:customers:{customer}") == 1
        store.close()
        producer = Producer({"bootstrap.servers": shop_stack.bootstrap_servers, "acks": "all"})
        if shop_stack.source_format == "avro":
            key, value = _debeziums_event(shop_stack, customer)
        else:
            key, value = json.dumps({"id": customer}).encode(), _envelope(customer)
        producer.produce(TOPIC, value, key, headers=[("traceparent", traceparent.encode())])
        assert producer.flush(30) == 0

        def linked_window() -> ReadableSpan | None:
            for span in _spans(tracing, exporter):
                links = [format(k.context.trace_id, "032x") for k in span.links]
                if span.name.startswith("window ") and producer_trace in links:
                    return span
            return None

        window = wait_for(linked_window, LANDS_S, "the window linked to the producer's trace")

    spans = _spans(tracing, exporter)
    trace = [s for s in spans if s.context.trace_id == window.context.trace_id]
    by_id = {s.context.span_id: s for s in trace}
    assert window.parent is None and window.kind is SpanKind.CONSUMER
    attributes = dict(window.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == running.definition.topics.dirty
    assert attributes["messaging.consumer.group.name"] == f"{name}.syncer"
    (link,) = [k for k in window.links if format(k.context.trace_id, "032x") == producer_trace]
    assert dict(link.attributes or {})["messaging.destination.name"] == TOPIC

    requests = [
        s
        for s in trace
        if s.kind is SpanKind.CLIENT and "http.request.method" in (s.attributes or {})
    ]
    assert requests, [s.name for s in trace]
    posts = [s for s in requests if dict(s.attributes or {})["http.request.method"] == "POST"]
    assert any(
        "/api/resources/shop_customers/batch" in str(dict(s.attributes or {})["url.full"])
        for s in posts
    )
    for request in requests:
        assert _chain(request, by_id) == [request.name, "deliver customers", window.name]
        assert dict(request.attributes or {})["reach.tenant"] == tenant
    names = {s.name for s in trace}
    assert {"recompute customers", "dedup customers", "deliver customers"} <= names
    for stage in ("recompute customers", "dedup customers", "deliver customers"):
        (span,) = [s for s in trace if s.name == stage]
        assert span.parent is not None and span.parent.span_id == window.context.span_id
    # The dedup lookup's Redis command, by the redis instrumentation, in the same trace.
    assert any(s.name == "MGET" for s in trace), sorted(names)


STATIC_AUTH = "    mode: static\n    secret_env: REACH_SYNC_STATIC_KEY\n"
JWT_AUTH = (
    "    mode: jwt\n"
    "    partner_id: ${REACH_SYNC_PARTNER_ID}\n"
    "    secret_env: REACH_SYNC_JWT_SECRET\n"
)


def _config(auth: str, tmp_path: Path) -> Path:
    if auth == "jwt":
        return EXAMPLE
    text = EXAMPLE.read_text()
    assert JWT_AUTH in text
    path = tmp_path / "shop-static.yaml"
    path.write_text(text.replace(JWT_AUTH, STATIC_AUTH))
    return path


@pytest.fixture
def logged() -> Iterator[Callable[[list[str]], io.StringIO]]:
    """Every log line of the process, as JSON, at debug level, through reach-sync's handler
    (the redaction included); the root logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def capture(known_secrets: list[str]) -> io.StringIO:
        out = io.StringIO()
        configure_logging(logging.DEBUG, known_secrets, fmt="json", stream=out)
        return out

    yield capture
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _span_text(spans: list[ReadableSpan]) -> str:
    """Everything a span exports that is text: name, attributes, events, links, status,
    resource."""

    def attributes(values: Any) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(values or {}).items()}

    return json.dumps(
        [
            {
                "name": s.name,
                "attributes": attributes(s.attributes),
                "events": [(e.name, attributes(e.attributes)) for e in s.events],
                "links": [attributes(k.attributes) for k in s.links],
                "status": s.status.description,
                "resource": attributes(s.resource.attributes),
            }
            for s in spans
        ],
        default=str,
    )


@pytest.mark.parametrize("auth", ["jwt", "static"])
def test_no_secret_and_no_customer_data_in_logs_or_spans_of_a_whole_run(
    auth: str,
    shop_stack: StackEndpoints,
    unique: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logged: Callable[[list[str]], io.StringIO],
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique(f"leaks-{auth}")
    run = uuid.uuid4().hex[:10]
    env = {**shop_env(shop_stack, name), "REACH_SYNC_STATIC_KEY": shop_stack.reach_static_key}
    config = _config(auth, tmp_path)
    definition = load_definition(config, env)
    credentials = [shop_stack.reach_jwt_secret, shop_stack.reach_static_key]
    assert set(credentials) & set(definition_secrets(definition))  # the run's own is known
    # Captured on purpose, as an operator could: the redaction must still keep it out.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "authorization")
    customers = []
    for n in range(3):
        email = f"leak-{run}-{n}@example.org"
        notes = f"unmapped-note-{run}-{n}"
        customers.append((*insert_customer(dsn, 1 + n, email, internal_notes=notes), email, notes))

    logs = logged(definition_secrets(definition))
    exporter = InMemorySpanExporter()
    tracing = telemetry.start_tracing(definition_secrets(definition), exporter=exporter)
    assert tracing is not None
    try:
        with pipeline_thread(shop_stack, name, env=env, config=config) as running:
            caught_up(
                running,
                lambda: all(sandbox.history(t, SCHEMA, str(c)) for c, t, _, _ in customers),
                timeout_s=120,
            )
            first, tenant, _, _ = customers[0]
            sql(dsn, ("UPDATE customers SET first_name = 'Renamed' WHERE id = %s", (first,)))
            wait_for(
                lambda: (
                    (sandbox.current(tenant, SCHEMA, str(first)) or {}).get("firstName")
                    == "Renamed"
                ),
                LANDS_S,
                "the rename in the sandbox",
                guard=running.check_alive,
            )
    finally:
        telemetry.stop_tracing(tracing)  # exports what is still buffered
    spans = list(exporter.get_finished_spans())

    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert len(lines) > 10 and any("trace_id" in line for line in lines)
    requests = [s for s in spans if "http.request.method" in (s.attributes or {})]
    assert requests and any(s.name.startswith("window ") for s in spans)
    captured = [dict(s.attributes or {}).get("http.request.header.authorization") for s in requests]
    assert captured and all(c == ("Bearer ***",) for c in captured), captured[:3]

    texts = {"logs": logs.getvalue(), "spans": _span_text(spans)}
    never = {"JWT secret": shop_stack.reach_jwt_secret, "static key": shop_stack.reach_static_key}
    for n, (_, _, email, notes) in enumerate(customers):
        never[f"e-mail {n}"] = email
        never[f"unmapped notes {n}"] = notes
    for where, text in texts.items():
        for what, value in never.items():
            assert value not in text, f"{what} in the {where}"
        assert "eyJ" not in text, f"a JWT in the {where}"  # a minted token is a credential too
