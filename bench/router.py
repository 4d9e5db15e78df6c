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
  and committed offsets (group join excluded: timed from its first committed batch).

Prints the medians, their ratios to raw, and one JSON object on the last line.

    .venv/bin/python bench/router.py --events 200000
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
from pathlib import Path
from typing import Any

import orjson
import psycopg
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from reach_devstack import broker as broker_component
from reach_devstack import postgres as pg_component
from reach_devstack.process import ManagedProcess, free_port, unprivileged_user, wait_until
from reach_devstack.shop import PURCHASE_SKEW, zipf_rank

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.router.debezium import EventDecoder, decode_event
from consumer.router.loop import RouterStats, run_router
from consumer.router.triggers import TriggerIndex

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


# --- the servers ------------------------------------------------------------------------------


@contextmanager
def servers(state: Path) -> Iterator[tuple[str, str]]:
    """A broker and a Postgres with the shop schema; yields (bootstrap servers, dsn)."""
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


def produce_waiting(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    """Produce, waiting for room when the local queue is full (a preload outruns the broker)."""
    while True:
        try:
            producer.produce(topic, value, key)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def preload(bootstrap: str, topic: str, events: int, schemas: bool) -> int:
    """Create the topic and fill it; returns the average value size in bytes."""
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
    factory = EventFactory(schemas, random.Random(7))
    total = 0
    for _ in range(events):
        key, value = factory.next()
        total += len(value)
        produce_waiting(producer, topic, value, key)
    if producer.flush(300) != 0:
        raise SystemExit("preload: the broker did not acknowledge every event")
    return total // events


# --- the measurements -------------------------------------------------------------------------


def _rate(events: int, first_batch: int, started: float, ended: float) -> float:
    """Events per second after the first batch (which carries the connection setup)."""
    return (events - first_batch) / (ended - started)


def measure_consume(bootstrap: str, topic: str, events: int, work: Work) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
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
    """The typed-decode ceiling: a fresh router decoder for the definition's triggers."""
    return EventDecoder(TriggerIndex.from_definition(definition).image_columns()).decode


def _definition(state: Path, bootstrap: str, dsn: str, topic: str) -> SyncDefinition:
    data = yaml.safe_load(EXAMPLE.read_text())
    kafka = data["source"]["kafka"]
    del kafka["topic_pattern"]
    kafka["topics"] = [topic]
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


# --- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--no-schemas", dest="schemas", action="store_false")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="reach-sync-bench-") as tmp:
        state = Path(tmp)
        state.chmod(0o755)  # an unprivileged Postgres must traverse it
        with servers(state) as (bootstrap, dsn):
            topic = "bench.public.events"
            started = time.perf_counter()
            value_size = preload(bootstrap, topic, args.events, args.schemas)
            print(
                f"preloaded {args.events:,} events (avg value {value_size:,} B, "
                f"{'with' if args.schemas else 'without'} schema block) "
                f"in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            raw, whole, decode, routed = [], [], [], []
            stats: RouterStats | None = None
            for run in range(args.repeat):
                raw.append(measure_consume(bootstrap, topic, args.events, _touch))
                whole.append(measure_consume(bootstrap, topic, args.events, _whole_decode))
                definition = _definition(state, bootstrap, dsn, topic)
                decode.append(
                    measure_consume(bootstrap, topic, args.events, routing_decode(definition))
                )
                rate, stats = measure_router(definition, args.events)
                routed.append(rate)
                print(
                    f"run {run + 1}: raw {raw[-1]:,.0f}/s, whole decode {whole[-1]:,.0f}/s, "
                    f"decode {decode[-1]:,.0f}/s, "
                    f"router {rate:,.0f}/s",
                    file=sys.stderr,
                )
    assert stats is not None
    return _report(args, value_size, {"raw": raw, "whole": whole, "decode": decode}, routed, stats)


def _report(
    args: argparse.Namespace,
    value_size: int,
    consumed: dict[str, list[float]],
    routed: list[float],
    stats: RouterStats,
) -> int:
    medians = {name: statistics.median(v) for name, v in consumed.items()}
    medians["router"] = statistics.median(routed)
    print(
        f"{args.events:,} events, {'with' if args.schemas else 'without'} schema block "
        f"(avg value {value_size:,} B), {PARTITIONS} partitions, lz4, {KEYS:,} keys per table "
        f"(Zipf s={PURCHASE_SKEW}); medians of {args.repeat}"
    )
    for name, label in (
        ("raw", "raw consume (consume(1000), touch)"),
        ("whole", "whole decode (consume + decode_event)"),
        ("decode", "typed decode (consume + router decoder)"),
        ("router", "router (to acked dirty keys + commits)"),
    ):
        print(
            f"  {label:<42} {medians[name]:>10,.0f} events/s  {medians[name] / medians['raw']:.2f}"
        )
    print(
        f"  last router run: {stats.dirty_keys:,} dirty keys, {stats.batches:,} batches, "
        f"{stats.commits:,} commits, ignored {dict(stats.ignored)}, "
        f"dead-lettered {stats.dead_lettered}"
    )
    summary = {
        "events": args.events,
        "schemas": args.schemas,
        "avg_value_bytes": value_size,
        "partitions": PARTITIONS,
        "repeat": args.repeat,
        "events_per_s": {k: round(v) for k, v in medians.items()},
        "ratio_to_raw": {k: round(v / medians["raw"], 3) for k, v in medians.items()},
        "decode_to_whole_decode": round(medians["decode"] / medians["whole"], 3),
        "router_to_decode": round(medians["router"] / medians["decode"], 3),
        "router_dirty_keys": stats.dirty_keys,
        "router_batches": stats.batches,
        "router_commits": stats.commits,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
