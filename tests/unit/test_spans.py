"""The spans of a window: their tree down to the Reach requests, their links to the producers'
trace contexts, and what a failure records. A real Syncer and ReachClient (instrumented by
telemetry.py) over in-memory stand-ins for the database, Redis, Kafka and Reach."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode

from consumer.errors import Retryable
from consumer.observe import telemetry
from consumer.observe.spans import MAX_LINKS, links_from, traceparent_of, window_span
from consumer.reach.client import ReachClient
from consumer.router import loop as router
from consumer.router.debezium import Change
from consumer.router.dirty import Cause, DirtyKey, EntityId, decode_dirty, encode_dirty
from consumer.sink.dedup import LastSent
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.recompute import Recomputed
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.loop import Syncer
from consumer.syncer.partitions import Partition
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window
from tests.shop_definition import shop_definition

TOPIC = "reach-sync.shop.dirty"
PRODUCER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{PRODUCER_TRACE}-00f067aa0ba902b7-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EMAIL = "hidden.customer@example.org"


class _Database:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail

    async def recompute(self, resource: Any, ids: Sequence[EntityId]) -> Recomputed:
        if self.fail is not None:
            raise self.fail
        rows = {
            str(i): {
                "id": i,
                "tenant": "merchant-1",
                "customer_id": 8,
                "status": "completed",
                "amount_cents": 1250,
                "currency": "EUR",
                "created_at": None,
            }
            for i in ids
        }
        return Recomputed(rows=rows, gone=[])

    async def tenants(self, resource: Any) -> list[str]:
        return []


class _LastSent:
    async def get_many(self, resource: str, ids: Sequence[EntityId]) -> dict[str, LastSent]:
        return {}

    async def record_sent(self, resource: str, sent: Iterable[tuple[EntityId, LastSent]]) -> None:
        return None

    async def forget(self, resource: str, ids: Sequence[EntityId]) -> None:
        return None

    async def put_in_doubt(
        self, resource: str, ids: Iterable[EntityId], *, required: bool = True
    ) -> None:
        return None


class _Audit:
    def announce(
        self, name: str, sending: Iterable[Sending] = (), deleting: Iterable[Deleting] = ()
    ) -> int:
        return len(list(sending)) + len(list(deleting))

    def record(
        self, name: str, accepted: Iterable[Sent] = (), deleted: Iterable[Removed] = ()
    ) -> int:
        return len(list(accepted)) + len(list(deleted))

    def flush(self, timeout_s: float) -> None:
        return None


class _Kafka:
    """The producer (dead letters) and the consumer (commits) the syncer uses."""

    def flush(self, timeout_s: float) -> int:
        return 0

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        return None


@dataclass(frozen=True)
class _Traced:
    exporter: InMemorySpanExporter
    tracing: telemetry.Tracing


@pytest.fixture
def spans() -> Iterator[_Traced]:
    exporter = InMemorySpanExporter()
    tracing = telemetry.start_tracing(exporter=exporter)
    assert tracing is not None
    yield _Traced(exporter, tracing)
    telemetry.stop_tracing(tracing)


def _reach(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"data": {"id": "r-1"}})


def _syncer(db: _Database) -> tuple[Syncer, ReachClient]:
    definition = shop_definition(REACH_SYNC_JWT_SECRET="a-jwt-secret-of-at-least-32-bytes!")
    # Made while tracing is on: the client's requests are instrumented from its birth.
    client = ReachClient(definition.destination, transport=httpx.MockTransport(_reach))
    kafka: Any = _Kafka()
    stand_ins: Any = (db, _LastSent(), _Audit())
    blocks = TenantBlocks(definition.destination.tenant_probe)
    sink = WindowSink(
        definition,
        client=client,
        db=stand_ins[0],
        last_sent=stand_ins[1],
        producer=kafka,
        audit=stand_ins[2],
        gate=blocks,
        stats=SyncerStats(),
    )
    return Syncer(definition, sink, blocks, consumer_factory=lambda settings: kafka), client


def _window(*parents: str | None) -> Window:
    window = Window(opened_at=time.monotonic(), due_after_s=0.1)
    for offset, parent in enumerate(parents):
        cause = Cause(kind="cdc", topic="shop.public.transactions", offset=100 + offset)
        cause = Cause(**{**_fields(cause), "traceparent": parent})
        window.add(DirtyKey("transactions", 5 + offset % 2, cause), 40 + offset, 0.1)
    return window


def _fields(cause: Cause) -> dict[str, Any]:
    return {f: getattr(cause, f) for f in cause.__struct_fields__}


async def _run(made: tuple[Syncer, ReachClient], window: Window) -> None:
    syncer, client = made
    try:
        await syncer.run_window(Partition(TOPIC, 3), window)
    finally:
        syncer.sink.close()
        await client.aclose()


def _finished(traced: _Traced) -> dict[str, list[ReadableSpan]]:
    assert traced.tracing.force_flush()  # spans are exported by the batch processor: flush it
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in traced.exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    return by_name


def _parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_a_window_is_one_trace_down_to_each_reach_request(
    spans: _Traced,
) -> None:
    await _run(_syncer(_Database()), _window(TRACEPARENT, None, OTHER, TRACEPARENT))
    found = _finished(spans)
    (window,) = found[f"window {TOPIC}"]
    assert window.parent is None and window.kind is SpanKind.CONSUMER
    attributes = dict(window.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == TOPIC
    assert attributes["messaging.destination.partition.id"] == "3"
    assert attributes["messaging.consumer.group.name"] == "reach-sync-shop.syncer"
    assert (
        attributes["reach_sync.window.first_offset"],
        attributes["reach_sync.window.end_offset"],
    ) == (40, 43)
    assert (attributes["reach_sync.window.entities"], attributes["reach_sync.window.triggers"]) == (
        2,
        4,
    )
    assert attributes["reach_sync.window.attempt"] == 1
    # Linked to each distinct producer context once, saying which source event carried it.
    linked = [(format(k.context.trace_id, "032x"), dict(k.attributes or {})) for k in window.links]
    assert [trace_id for trace_id, _ in linked] == [PRODUCER_TRACE, OTHER.split("-")[1]]
    assert linked[0][1]["messaging.kafka.offset"] == 100
    assert linked[0][1]["messaging.destination.name"] == "shop.public.transactions"

    window_id = window.context.span_id
    stages = {name: found[f"{name} transactions"] for name in ("recompute", "dedup", "deliver")}
    for name, (stage,) in stages.items():
        assert _parent_id(stage) == window_id, name
        assert stage.context.trace_id == window.context.trace_id
    (recompute,), (deliver,) = stages["recompute"], stages["deliver"]
    assert recompute.kind is SpanKind.CLIENT
    assert dict(recompute.attributes or {})["db.system.name"] == "postgresql"
    assert dict(deliver.attributes or {})["reach_sync.sent"] == 2

    requests = found["POST"]
    assert len(requests) == 2  # real time: one single write per transaction
    for request in requests:
        request_attributes = dict(request.attributes or {})
        assert request.kind is SpanKind.CLIENT
        assert _parent_id(request) == deliver.context.span_id
        assert request_attributes["http.response.status_code"] == 201
        assert request_attributes["reach.tenant"] == "merchant-1"
        assert "/api/resources/shop_transactions" in str(request_attributes["url.full"])
        assert "authorization" not in repr(request_attributes).lower()


async def test_a_failed_window_records_the_error_type_never_its_message(
    spans: _Traced,
) -> None:
    failure = Retryable(f"source database unavailable for {EMAIL}")
    await _run(_syncer(_Database(fail=failure)), _window(None))
    found = _finished(spans)
    (window,), (recompute,) = found[f"window {TOPIC}"], found["recompute transactions"]
    for span in (window, recompute):
        assert span.status.status_code is StatusCode.ERROR
        assert dict(span.attributes or {})["error.type"] == "consumer.errors.Retryable"
        assert not span.events
        assert EMAIL not in repr((dict(span.attributes or {}), span.status.description))
    assert "POST" not in found


def test_links_are_bounded_and_skip_what_is_not_a_trace_context() -> None:
    parents = [f"00-{n + 1:032x}-{n + 1:016x}-01" for n in range(MAX_LINKS + 8)]
    causes = [Cause(kind="cdc", traceparent=p) for p in ["00-ab-cd-01", "junk", *parents]]
    links = links_from(causes)
    assert len(links) == MAX_LINKS
    assert links[0].context.trace_id == 1 and links[0].context.is_remote


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ([], None),
        ([("other", b"x"), ("traceparent", TRACEPARENT.encode())], TRACEPARENT),
        ({"traceparent": TRACEPARENT}, TRACEPARENT),
        ([("traceparent", None)], None),
        ([("traceparent", b"\xff" * 55)], None),
        ([("traceparent", b"0" * 500)], None),  # not a trace context: not put on dirty keys
    ],
)
def test_the_traceparent_header_is_read_when_a_producer_set_it(
    headers: Any, expected: str | None
) -> None:
    assert traceparent_of(headers) == expected


def test_without_tracing_a_window_span_is_the_invalid_span_and_sets_no_context() -> None:
    assert not telemetry.enabled()
    with window_span(shop_definition(), TOPIC, 0, _window(TRACEPARENT), 1) as span:
        assert span is INVALID_SPAN
        assert trace.get_current_span() is INVALID_SPAN


class _Message:
    """A consumed message's headers, counting how often they are read."""

    def __init__(self, headers: list[tuple[str, bytes | None]] | None) -> None:
        self._headers = headers
        self.reads = 0

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        self.reads += 1
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, 1_700_000_000_123


@pytest.mark.parametrize(
    ("headers", "expected"), [(None, None), ([("traceparent", TRACEPARENT.encode())], TRACEPARENT)]
)
def test_the_router_puts_the_producers_trace_context_on_the_cause(
    headers: list[tuple[str, bytes | None]] | None, expected: str | None
) -> None:
    change = Change("public.customers", "u", {"id": 7}, None, {"id": 7}, 1_000, 42)
    message = _Message(headers)
    message_arg: Any = message
    cause = router.cause_of(message_arg, "shop.public.customers", 1, 30, change)
    assert (cause.traceparent, message.reads) == (expected, 1)
    assert cause.appended_ms == 1_700_000_000_123  # where reach-sync's own latency share starts
    encoded = encode_dirty(DirtyKey("customers", 7, cause))
    assert (b"traceparent" in encoded) is (expected is not None)  # omitted when there is none
    assert decode_dirty(encoded).cause == cause
