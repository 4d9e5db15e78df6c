"""How fast stage 1 routes, against what the consumer alone and decoding alone can do.

Starts its own broker and Postgres (as reach_devstack.pytest_fixtures does for the tests),
preloads one topic (4 partitions, lz4) with ``--events`` Debezium-shaped customer and transaction
events over 50,000 keys per table drawn from a Zipf distribution, with the schema block (about
3.5 KB) or, with ``--no-schemas``, without it (about 700 B). Then, in the same run, ``--repeat``
times each:

- raw: confluent-kafka ``consume(1000)``, touching key and value;
- whole decode: the same plus ``decode_event`` (every column of the images, the schema block
  scanned on every event), the baseline of the next;
- decode: the same plus the router's own decoder (``EventDecoder`` for the definition's
  triggers: only op, table, key and trigger columns, the schema block skipped once known), the
  typed decoding ceiling;
- router: ``run_router`` on the shop definition, events/s through to acknowledged dirty keys
  and committed offsets (group join excluded: timed from its first committed batch);
- library floor: what the router does in its libraries alone, with none of its own Python
  between them: the typed decode, then per batch of ``BATCH_MAX_EVENTS`` as many dirty keys as
  the router made (its last run's dirty keys per event), each one encoded and produced, and
  the batch acknowledged and committed as the router does (the next batch decoded while the last
  is acknowledged). No planning, merging or causes. ``router / floor`` is the share of the
  router's time that its libraries take; the rest is reach-sync's own Python
  (docs/benchmarks.md, "What the two unmet ratios would take");
- planning: ``plan_change`` alone, µs per event, over ``PLANNED_EVENTS`` of the same events
  decoded beforehand (no server): the one step of the router's own Python that every event
  takes.

With ``--format avro`` the same stream is preloaded as Confluent's AvroConverter writes it (the
local stack's schema registry started too), and every measurement reads it through reach-sync's
Avro decoder; ``--format both`` measures JSON and Avro in the same run and prints their ratios.

Prints the medians, their ratios to raw, and one JSON object on the last line.

    .venv/bin/python bench/router.py --events 200000
    .venv/bin/python bench/router.py --events 200000 --format both
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from fastavro import parse_schema
from reach_devstack import broker as broker_component
from reach_devstack import postgres as pg_component
from reach_devstack import registry as registry_component
from reach_devstack.connect_avro import (
    avro_schema,
    avro_value,
    wire_format,
    without_logical_types,
)
from reach_devstack.process import ManagedProcess, free_port, unprivileged_user, wait_until
from reach_devstack.shop import PURCHASE_SKEW, zipf_rank

from consumer.cli.process_tuning import tune_gc
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.kafka_settings import PRODUCER_DEFAULTS
from consumer.router.debezium import Change, decode_event
from consumer.router.dirty import Cause, DirtyKey, dirty_message_key, encode_dirty
from consumer.router.formats import SourceDecoder
from consumer.router.loop import BATCH_MAX_EVENTS, PRODUCER_LINGER_MS, RouterStats, run_router
from consumer.router.triggers import TriggerIndex, plan_change

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shop.yaml"
SHOP_SQL = ROOT / "devstack" / "reach_devstack" / "shop.sql"
FIXTURE = ROOT / "tests" / "fixtures" / "debezium" / "postgres-json-with-schemas.jsonl"
PARTITIONS = 4
KEYS = 50_000
CONSUME_BATCH = 1000
READY_TIMEOUT_S = 60.0
# Local-broker group join in about 3 s (docs/local-stack.md).
SESSION_TIMEOUT_MS = 6000
RUN_TIMEOUT_S = 900.0
# Share of customer events (the rest are transactions), and each table's op mix.
CUSTOMER_SHARE = 0.4
CUSTOMER_OPS = (("u", 80), ("c", 15), ("d", 5))
TRANSACTION_OPS = (("u", 55), ("c", 40), ("d", 5))
# The target for router / typed decode (issue 15); bench/pipeline.py checks it with this one.
TARGET_ROUTER_TO_DECODE = 0.6
# Events decoded beforehand for timing plan_change alone.
PLANNED_EVENTS = 50_000


# --- the servers ------------------------------------------------------------------------------


@contextmanager
def servers(state: Path) -> Iterator[tuple[str, str]]:
    """A broker and a Postgres with the shop schema; yields (bootstrap servers, dsn)."""
    with servers_and_registry(state, registry=False) as (bootstrap, dsn, _):
        yield bootstrap, dsn


@contextmanager
def servers_and_registry(state: Path, registry: bool) -> Iterator[tuple[str, str, str]]:
    """``servers``, and the local stack's schema registry when ``registry`` (else its URL is
    empty); yields (bootstrap servers, dsn, registry URL)."""
    registry_url = ""
    registry_process = None
    if registry:
        port = free_port()
        registry_url = f"http://127.0.0.1:{port}"
        spec = registry_component.registry_spec(port, state / "registry", state / "logs")
        registry_process = ManagedProcess(spec)
        registry_process.start()
    try:
        if registry_process is not None:
            wait_until(
                registry_process,
                lambda: registry_component.registry_ready(registry_url),
                READY_TIMEOUT_S,
            )
        with _broker_and_postgres(state) as (bootstrap, dsn):
            yield bootstrap, dsn, registry_url
    finally:
        if registry_process is not None:
            registry_process.stop()


@contextmanager
def _broker_and_postgres(state: Path) -> Iterator[tuple[str, str]]:
    broker_port = free_port()
    bootstrap = f"127.0.0.1:{broker_port}"
    broker = ManagedProcess(broker_component.broker_spec(broker_port, state / "logs"))
    config = pg_component.PostgresConfig(
        bin_dir=pg_component.find_postgres_bin(),
        data_dir=state / "postgres",
        port=free_port(),
        user="reach",
        password=uuid.uuid4().hex,
        database="shop",
    )
    run_as = unprivileged_user()
    pg_component.init_cluster(config, run_as, state / "logs" / "postgres.log")
    postgres = ManagedProcess(pg_component.postgres_spec(config, run_as, state / "logs"))
    broker.start()
    postgres.start()
    try:
        wait_until(broker, lambda: broker_component.broker_ready(bootstrap), READY_TIMEOUT_S)
        wait_until(postgres, lambda: pg_component.postgres_ready(config), READY_TIMEOUT_S)
        pg_component.create_database(config)
        with psycopg.connect(config.dsn, autocommit=True) as conn:
            conn.execute(SHOP_SQL.read_text())
        yield bootstrap, config.dsn
    finally:
        postgres.stop()
        broker.stop()


# --- the events -------------------------------------------------------------------------------


class EventFactory:
    """Debezium JSON as Kafka Connect writes it, with the shared fixture's real schema blocks."""

    def __init__(self, schemas: bool, rng: random.Random) -> None:
        self._schemas = schemas
        self._rng = rng
        self._value_schema: dict[str, bytes] = {}
        self._key_schema: dict[str, bytes] = {}
        self._source: dict[str, Any] = {}
        for line in FIXTURE.read_text().splitlines():
            record = json.loads(line)
            table = record["topic"].rsplit(".", 1)[-1]
            if table in ("customers", "transactions") and record["value"] is not None:
                self._value_schema[table] = orjson.dumps(record["value"]["schema"])
                self._key_schema[table] = orjson.dumps(record["key"]["schema"])
                self._source = record["value"]["payload"]["source"]
        self._lsn = 30_000_000

    def next(self) -> tuple[bytes, bytes]:
        if self._rng.random() < CUSTOMER_SHARE:
            table, op, row = "customers", _pick(self._rng, CUSTOMER_OPS), self.customer_row()
        else:
            table, op, row = (
                "transactions",
                _pick(self._rng, TRANSACTION_OPS),
                self.transaction_row(),
            )
        self._lsn += 184
        now_ms = int(time.time() * 1000)
        source = {**self._source, "table": table, "ts_ms": now_ms, "lsn": self._lsn}
        payload = {
            "before": row if op == "d" else None,
            "after": None if op == "d" else row,
            "op": op,
            "source": source,
            "ts_ms": now_ms,
            "transaction": None,
        }
        key = orjson.dumps({"id": row["id"]})
        value = orjson.dumps(payload)
        if self._schemas:
            key = b'{"schema":' + self._key_schema[table] + b',"payload":' + key + b"}"
            value = b'{"schema":' + self._value_schema[table] + b',"payload":' + value + b"}"
        return key, value

    def _rank(self) -> int:
        return zipf_rank(self._rng.random(), KEYS, PURCHASE_SKEW)

    def customer_row(self) -> dict[str, Any]:
        n = self._rank()
        return {
            "id": n,
            "email": f"customer{n}@example.com",
            "first_name": f"First{n % 997}",
            "last_name": f"Last{n % 991}",
            "phone": f"+1555{n:07d}",
            "updated_at": "2026-11-22T22:49:47.008793Z",
        }

    def transaction_row(self) -> dict[str, Any]:
        return {
            "id": self._rank(),
            "customer_id": self._rank(),
            "amount_cents": self._rng.randrange(100, 100_000),
            "currency": "USD",
            "status": "completed",
            "created_at": "2026-11-22T22:49:47.002486Z",
            "updated_at": "2026-11-22T22:49:47.005153Z",
        }


def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


class AvroEncoder:
    """The factory's events (with their schema block) as Confluent's AvroConverter writes them:
    each schema derived from its Connect schema (reach_devstack.connect_avro) and registered
    once, through ``register(subject, schema_text) -> id``."""

    def __init__(self, register: Callable[[str, str], int], topic: str) -> None:
        self._register = register
        self._topic = topic
        self._writers: dict[bytes, tuple[int, Any, dict[str, Any]]] = {}

    def encode(self, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        return self.encode_one(key, "key"), self.encode_one(value, "value")

    def encode_one(self, message: bytes, part: str) -> bytes:
        schema_end = message.index(b',"payload":')
        block = message[len(b'{"schema":') : schema_end]
        writer = self._writers.get(block)
        if writer is None:
            connect = orjson.loads(block)
            schema = avro_schema(connect)
            schema_id = self._register(f"{self._topic}-{part}", json.dumps(schema))
            writer = (schema_id, parse_schema(without_logical_types(schema)), connect)
            self._writers[block] = writer
        schema_id, parsed, connect = writer
        payload = orjson.loads(message[schema_end + len(b',"payload":') : -1])
        return bytes(wire_format(schema_id, parsed, avro_value(connect, payload)))


class AvroEvents(AvroEncoder):
    """``AvroEncoder`` registering under ``<topic>-key`` and ``<topic>-value`` in the schema
    registry at ``registry_url``."""

    def __init__(self, registry_url: str, topic: str) -> None:
        self._http = httpx.Client(base_url=registry_url, timeout=10)
        super().__init__(self._post, topic)

    def _post(self, subject: str, schema: str) -> int:
        answer = self._http.post(
            f"/subjects/{subject}/versions",
            json={"schema": schema},
            headers={"content-type": "application/vnd.schemaregistry.v1+json"},
        )
        return int(answer.raise_for_status().json()["id"])

    def close(self) -> None:
        self._http.close()


def produce_waiting(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    """Produce, waiting for room when the local queue is full (a preload outruns the broker)."""
    while True:
        try:
            producer.produce(topic, value, key)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def preload(
    bootstrap: str, topic: str, events: int, schemas: bool, avro: AvroEvents | None = None
) -> int:
    """Create the topic and fill it (in Avro with ``avro``: the same stream, event for event);
    returns the average value size in bytes."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=30)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
        }
    )
    factory = EventFactory(schemas or avro is not None, random.Random(7))
    total = 0
    for _ in range(events):
        key, value = factory.next()
        if avro is not None:
            key, value = avro.encode(key, value)
        total += len(value)
        produce_waiting(producer, topic, value, key)
    if producer.flush(300) != 0:
        raise SystemExit("preload: the broker did not acknowledge every event")
    return total // events


# --- the measurements -------------------------------------------------------------------------


def _rate(events: int, first_batch: int, started: float, ended: float) -> float:
    """Events per second after the first batch (which carries the connection setup)."""
    return (events - first_batch) / (ended - started)


def backlog_consumer(bootstrap: str, partitions: list[tuple[str, int]]) -> Consumer:
    """A consumer of a fresh group assigned ``partitions`` from their beginning, as every
    ceiling (and the floor) reads the preloaded backlog."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in partitions])
    return consumer


def measure_consume(bootstrap: str, topic: str, events: int, work: Work) -> float:
    consumer = backlog_consumer(bootstrap, [(topic, p) for p in range(PARTITIONS)])
    seen, first, started = 0, 0, 0.0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while seen < events and time.monotonic() < deadline:
            batch = consumer.consume(CONSUME_BATCH, 1.0)
            for message in batch:
                work(message.key(), message.value(), message.topic())
            seen += len(batch)
            if batch and not first:
                first, started = len(batch), time.perf_counter()
        ended = time.perf_counter()
    finally:
        consumer.close()
    if seen < events:
        raise SystemExit(f"consume: read {seen} of {events}")
    return _rate(events, first, started, ended)


Work = Callable[[bytes | None, bytes | None, str | None], object]


def _touch(key: bytes | None, value: bytes | None, topic: str | None) -> int:
    return len(key or b"") + len(value or b"")


def _whole_decode(key: bytes | None, value: bytes | None, topic: str | None) -> object:
    return decode_event(key, value)


def routing_decode(definition: SyncDefinition) -> Work:
    """The typed-decode ceiling: a fresh router decoder for the definition's triggers, in its
    format (the router's SourceDecoder, Avro's writer schemas from the registry)."""
    columns = TriggerIndex.from_definition(definition).image_columns()
    return SourceDecoder.for_source(definition.source.kafka, columns).decode


def whole_decode(definition: SyncDefinition) -> Work:
    """Every column of the images (as ``decode_event`` and DLQ replay decode), in its format."""
    if definition.source.kafka.format == "json":
        return _whole_decode
    return SourceDecoder.for_source(definition.source.kafka).decode


def _definition(
    state: Path, bootstrap: str, dsn: str, topic: str, registry_url: str = ""
) -> SyncDefinition:
    """The shop's definition on ``topic``: JSON, or Avro with ``registry_url``."""
    data = yaml.safe_load(EXAMPLE.read_text())
    kafka = data["source"]["kafka"]
    del kafka["topic_pattern"]
    kafka["topics"] = [topic]
    kafka["format"] = "avro" if registry_url else "json"
    kafka["schema_registry"] = {"url": registry_url or "http://127.0.0.1:1"}
    tag = uuid.uuid4().hex[:8]
    data["topics"] = {"dirty": f"bench.dirty.{tag}", "dead_letter": f"bench.dlq.{tag}"}
    path = state / f"shop-{tag}.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {
        "REACH_SYNC_BOOTSTRAP_SERVERS": bootstrap,
        "REACH_SYNC_DATABASE_URL": dsn,
        "REACH_SYNC_GROUP_ID": f"bench-{tag}",
        "REACH_SYNC_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "REACH_SYNC_LEAVE_GROUP_ON_CLOSE": "false",
        "REACH_SYNC_PARTNER_ID": "bench",
        "REACH_SYNC_JWT_SECRET": uuid.uuid4().hex,
        "REACH_SYNC_REACH_URL": "http://127.0.0.1:1",  # the router never calls Reach
        "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    return load_definition(path, env)


def measure_router(definition: SyncDefinition, events: int) -> tuple[float, RouterStats]:
    """Events/s from the router's first committed batch to the one that completes the topic."""
    stop = threading.Event()
    reports: list[tuple[float, int]] = []

    def on_stats(stats: RouterStats) -> None:
        reports.append((time.perf_counter(), stats.events))
        if stats.events >= events:
            stop.set()

    timer = threading.Timer(RUN_TIMEOUT_S, stop.set)
    timer.start()
    try:
        final = run_router(definition, stop, on_stats=on_stats)
    finally:
        timer.cancel()
    if final.events < events:
        raise SystemExit(f"router: routed {final.events} of {events} in {RUN_TIMEOUT_S} s")
    (started, first), (ended, _) = reports[0], reports[-1]
    return _rate(events, first, started, ended), final


def measure_floor(
    bootstrap: str,
    partitions: list[tuple[str, int]],
    events: int,
    decode: Work,
    dirty_per_event: float,
    dirty_partitions: int,
) -> float:
    """The router's library floor (module docstring) over ``partitions`` from their beginning:
    events/s after the first batch.

    The dirty keys go to a topic of their own with ``dirty_partitions`` (the definition's), keyed by
    entity over ``KEYS`` ids as the router's are, so the broker gets the same spread of
    partitions; the keys are built beforehand (building them is the router's own Python), and
    encoded as they are produced. A delivery the broker refuses fails the measurement. Each
    ``consume`` asks for no more than what is left, so the last batch does not wait out the
    consume timeout. The loop's own Python is the least the measurement needs (a decode call
    and an offset per event), so the floor is if anything lower than a router with none.
    """
    tag = uuid.uuid4().hex[:8]
    dirty_topic = f"bench.floor.{tag}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(dirty_topic, dirty_partitions, 1)])
    created[dirty_topic].result(timeout=30)
    consumer = backlog_consumer(bootstrap, partitions)
    failures: list[str] = []
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            **PRODUCER_DEFAULTS,
            "linger.ms": PRODUCER_LINGER_MS,
            "delivery.report.only.error": True,
            "on_delivery": lambda error, _message: failures.append(error.str()),
        }
    )
    # Dirty keys as the router makes them from this stream (a cdc cause, every field set).
    cause = Cause(
        kind="cdc",
        table="public.transactions",
        op="u",
        topic=partitions[0][0],
        partition=3,
        offset=123_456,
        source_ts_ms=1_795_400_000_000,
        lsn=30_000_184,
        appended_ms=1_795_400_000_010,
    )
    keys = [
        (
            DirtyKey("customers", str(n), cause, 1_795_400_000_020),
            dirty_message_key("customers", str(n)),
        )
        for n in range(1, KEYS + 1)
    ]
    seen, first, started, owed, produced = 0, 0, 0.0, 0.0, 0
    offsets: dict[tuple[str, int], int] = {}
    in_flight: list[TopicPartition] | None = None
    deadline = time.monotonic() + RUN_TIMEOUT_S

    def settle(batch_offsets: list[TopicPartition]) -> None:
        """The last batch's dirty keys acknowledged, then its offsets committed."""
        if producer.flush(30) != 0:
            raise SystemExit("floor: dirty keys unacknowledged")
        consumer.commit(offsets=batch_offsets, asynchronous=False)

    try:
        while seen < events and time.monotonic() < deadline:
            batch = consumer.consume(min(BATCH_MAX_EVENTS, events - seen), 1.0)
            for message in batch:
                topic = message.topic() or ""
                decode(message.key(), message.value(), topic)
                offsets[(topic, message.partition() or 0)] = (message.offset() or 0) + 1
            if in_flight is not None:
                settle(in_flight)
            owed += len(batch) * dirty_per_event
            for _ in range(int(owed)):
                key, message_key = keys[produced % KEYS]
                producer.produce(dirty_topic, encode_dirty(key), message_key)
                produced += 1
            owed -= int(owed)
            in_flight = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            seen += len(batch)
            if batch and not first:
                first, started = len(batch), time.perf_counter()
        if in_flight is not None:
            settle(in_flight)
        ended = time.perf_counter()
    finally:
        consumer.close()
    if seen < events:
        raise SystemExit(f"floor: read {seen} of {events}")
    if failures:
        raise SystemExit(f"floor: {len(failures)} dirty keys refused, first: {failures[0]}")
    return _rate(events, first, started, ended)


def measure_planning(definition: SyncDefinition, schemas: bool, repeat: int) -> float:
    """``plan_change`` alone: the median over ``repeat`` timings of µs per event, over
    ``PLANNED_EVENTS`` of the factory's events decoded by the router's decoder beforehand."""
    index = TriggerIndex.from_definition(definition)
    decoder = SourceDecoder.for_source(definition.source.kafka, index.image_columns())
    factory = EventFactory(schemas, random.Random(11))
    changes = []
    for _ in range(PLANNED_EVENTS):
        key, value = factory.next()
        event = decoder.decode(key, value, None)
        if isinstance(event, Change):
            changes.append(event)
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        for change in changes:
            plan_change(change, index)
        timings.append((time.perf_counter() - started) / len(changes) * 1e6)
    return statistics.median(timings)


# --- the run ----------------------------------------------------------------------------------


@dataclass
class FormatRun:
    """One format's topic and its measurements (events/s per run)."""

    name: str
    topic: str
    value_size: int = 0
    raw: list[float] = field(default_factory=list)
    whole: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    routed: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    stats: RouterStats | None = None

    def medians(self) -> dict[str, float]:
        found = {
            "raw": self.raw,
            "whole": self.whole,
            "decode": self.decode,
            "router": self.routed,
            "floor": self.floor,
        }
        return {name: statistics.median(values) for name, values in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--no-schemas", dest="schemas", action="store_false")
    parser.add_argument(
        "--format",
        choices=("json", "avro", "both"),
        default="json",
        help="the same change stream as Kafka Connect JSON, as Confluent Avro, or both (each"
        " measured in the same run)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's default garbage collector settings instead of the ones `reach-sync"
        " run` sets (consumer/cli/process_tuning.py), for an A/B",
    )
    args = parser.parse_args(argv)
    if not args.default_gc:
        tune_gc()  # as `reach-sync run` does, so the figures are its
    names = ("json", "avro") if args.format == "both" else (args.format,)

    with tempfile.TemporaryDirectory(prefix="reach-sync-bench-") as tmp:
        state = Path(tmp)
        state.chmod(0o755)  # an unprivileged Postgres must traverse it
        with servers_and_registry(state, registry="avro" in names) as (bootstrap, dsn, url):
            runs = [FormatRun(name, f"bench.{name}.events") for name in names]
            for run in runs:
                started = time.perf_counter()
                avro = AvroEvents(url, run.topic) if run.name == "avro" else None
                try:
                    run.value_size = preload(bootstrap, run.topic, args.events, args.schemas, avro)
                finally:
                    if avro is not None:
                        avro.close()
                print(
                    f"preloaded {args.events:,} {run.name} events (avg value "
                    f"{run.value_size:,} B) in {time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                )
            for attempt in range(args.repeat):
                for run in runs:
                    _measure(run, state, bootstrap, dsn, url, args.events)
                    print(
                        f"run {attempt + 1} {run.name}: raw {run.raw[-1]:,.0f}/s, whole decode "
                        f"{run.whole[-1]:,.0f}/s, decode {run.decode[-1]:,.0f}/s, "
                        f"router {run.routed[-1]:,.0f}/s, library floor {run.floor[-1]:,.0f}/s",
                        file=sys.stderr,
                    )
            # The same Change whatever the format: timed once, on JSON.
            planning_us = measure_planning(
                _definition(state, bootstrap, dsn, runs[0].topic), args.schemas, args.repeat
            )
    return _report(args, runs, planning_us)


def _measure(
    run: FormatRun, state: Path, bootstrap: str, dsn: str, registry_url: str, events: int
) -> None:
    """One round of the five measurements on one format's topic."""
    definition = _definition(
        state, bootstrap, dsn, run.topic, registry_url if run.name == "avro" else ""
    )
    run.raw.append(measure_consume(bootstrap, run.topic, events, _touch))
    run.whole.append(measure_consume(bootstrap, run.topic, events, whole_decode(definition)))
    run.decode.append(measure_consume(bootstrap, run.topic, events, routing_decode(definition)))
    rate, run.stats = measure_router(definition, events)
    run.routed.append(rate)
    dirty_per_event = run.stats.dirty_keys / run.stats.events
    run.floor.append(
        measure_floor(
            bootstrap,
            [(run.topic, p) for p in range(PARTITIONS)],
            events,
            routing_decode(definition),
            dirty_per_event,
            definition.topics.dirty_partitions,
        )
    )


_LABELS = (
    ("raw", "raw consume (consume(1000), touch)"),
    ("whole", "whole decode (consume + every column)"),
    ("decode", "typed decode (consume + router decoder)"),
    ("router", "router (to acked dirty keys + commits)"),
    ("floor", "library floor (no Python of its own)"),
)


def _report(args: argparse.Namespace, runs: list[FormatRun], planning_us: float) -> int:
    print(
        f"{args.events:,} events ({'with' if args.schemas else 'without'} schema block in "
        f"JSON), {PARTITIONS} partitions, lz4, {KEYS:,} keys per table "
        f"(Zipf s={PURCHASE_SKEW}); medians of {args.repeat}"
    )
    summary: dict[str, Any] = {
        "events": args.events,
        "schemas": args.schemas,
        "partitions": PARTITIONS,
        "repeat": args.repeat,
        "planning_us_per_event": round(planning_us, 2),
    }
    medians = {run.name: run.medians() for run in runs}
    for run in runs:
        found, stats = medians[run.name], run.stats
        assert stats is not None
        print(f"{run.name} (avg value {run.value_size:,} B)")
        for name, label in _LABELS:
            print(f"  {label:<42} {found[name]:>10,.0f} events/s  {found[name] / found['raw']:.2f}")
        print(
            f"  last router run: {stats.dirty_keys:,} dirty keys, {stats.batches:,} batches, "
            f"{stats.commits:,} commits, ignored {dict(stats.ignored)}, "
            f"dead-lettered {stats.dead_lettered}"
        )
        # µs an event: the router's own Python (router minus its library floor), and what a
        # router at TARGET_ROUTER_TO_DECODE of the typed decode would leave for it.
        own_us = 1e6 / found["router"] - 1e6 / found["floor"]
        budget_us = 1e6 / (TARGET_ROUTER_TO_DECODE * found["decode"]) - 1e6 / found["floor"]
        print(
            f"  the router's own Python {own_us:.2f} us an event; at {TARGET_ROUTER_TO_DECODE} of "
            f"the typed decode it would have {budget_us:.2f} us; plan_change alone "
            f"{planning_us:.2f} us"
        )
        summary[run.name] = {
            "avg_value_bytes": run.value_size,
            "events_per_s": {k: round(v) for k, v in found.items()},
            "ratio_to_raw": {k: round(v / found["raw"], 3) for k, v in found.items()},
            "decode_to_whole_decode": round(found["decode"] / found["whole"], 3),
            "router_to_decode": round(found["router"] / found["decode"], 3),
            "floor_to_decode": round(found["floor"] / found["decode"], 3),
            "router_to_floor": round(found["router"] / found["floor"], 3),
            "own_python_us_per_event": round(own_us, 2),
            "own_python_budget_us_per_event": round(budget_us, 2),
            "router_dirty_keys": stats.dirty_keys,
            "router_batches": stats.batches,
            "router_commits": stats.commits,
            "router_dead_lettered": stats.dead_lettered,
        }
    if len(runs) == 2:
        json_m, avro_m = medians["json"], medians["avro"]
        ratios = {k: round(avro_m[k] / json_m[k], 3) for k in avro_m}
        print(
            "avro / json: "
            + ", ".join(f"{name} {ratios[name]:.2f}" for name, _ in _LABELS)
            + f"; value size {runs[1].value_size / runs[0].value_size:.2f}"
        )
        summary["avro_to_json"] = ratios
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
