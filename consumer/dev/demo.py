"""``reach-sync demo``: the local stack under a shop workload, with a live view, then a check.

What it shows today: the servers starting, the workload changing the shop database, and
Debezium's change events arriving on the broker, per table and operation. At the end it checks
that the latest event of every key on the topics equals that row in the database (the property
the sync pipeline builds on) and stops everything.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer, TopicPartition

from consumer.dev.stack import LocalStack, StackEndpoints, StackOptions

__all__ = ["add_arguments", "run"]

# The event stream counts as caught up once nothing new arrived for this long after the load.
QUIET_PERIOD_S = 3.0
CATCH_UP_TIMEOUT_S = 120.0
REFRESH_S = 1.0
VERIFIED_TABLES = ("customers", "transactions")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the workload runs")
    parser.add_argument("--rate", type=float, default=40.0, help="database changes per second")
    parser.add_argument("--state-dir", type=Path, default=Path(".state/demo"))
    parser.add_argument("--no-schemas", action="store_true", help="Debezium JSON without schemas")
    parser.add_argument("--seed", type=int, default=7, help="workload random seed")


@dataclass
class _Tally:
    """Events seen on the Debezium topics, and the latest image of every key."""

    by_table_op: Counter[tuple[str, str]] = field(default_factory=Counter)
    latest: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)
    total: int = 0
    last_event_at: float = field(default_factory=time.monotonic)

    def add(self, table: str, key: bytes | None, value: bytes | None) -> None:
        self.total += 1
        self.last_event_at = time.monotonic()
        key_id = _row_id(key)
        if value is None:
            self.by_table_op[(table, "tombstone")] += 1
            return
        envelope = orjson.loads(value)
        envelope = envelope.get("payload", envelope) if "schema" in envelope else envelope
        op = envelope.get("op", "?")
        self.by_table_op[(table, op)] += 1
        if key_id is not None:
            self.latest[(table, key_id)] = None if op == "d" else envelope.get("after")


def _row_id(key: bytes | None) -> str | None:
    if key is None:
        return None
    parsed = orjson.loads(key)
    payload = parsed.get("payload", parsed) if "schema" in parsed else parsed
    return str(payload.get("id"))


def _open_view(endpoints: StackEndpoints) -> Consumer:
    """Read every partition from the start without joining a group: a watcher, not a worker."""
    consumer = Consumer(
        {
            "bootstrap.servers": endpoints.bootstrap_servers,
            "group.id": "reach-sync-demo-view",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    metadata = consumer.list_topics(timeout=10)
    partitions = [
        TopicPartition(name, p, 0)
        for name, topic in metadata.topics.items()
        if name.startswith(f"{endpoints.topic_prefix}.public.")
        for p in topic.partitions
    ]
    consumer.assign(partitions)
    return consumer


def _drain(consumer: Consumer, tally: _Tally, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.1):
            topic = msg.topic()
            if msg.error() is None and topic is not None:
                tally.add(topic.rsplit(".", 1)[-1], msg.key(), msg.value())


def _render(tally: _Tally, elapsed: float, load_done: bool, tty: bool) -> None:
    tables = sorted({table for table, _ in tally.by_table_op})
    ops = ("r", "c", "u", "d", "tombstone")
    lines = [
        f"t={elapsed:5.1f}s  events {tally.total:7d}  ({tally.total / max(elapsed, 0.1):6.0f}/s)"
        f"  workload {'done' if load_done else 'running'}",
        f"  {'table':<14}" + "".join(f"{op:>10}" for op in ops),
    ]
    for table in tables:
        lines.append(
            f"  {table:<14}" + "".join(f"{tally.by_table_op[(table, op)]:>10}" for op in ops)
        )
    if tty:
        # Clear below, draw the block, then return to its first line for the next redraw.
        sys.stdout.write("\x1b[J" + "\n".join(lines) + f"\n\x1b[{len(lines)}F")
        sys.stdout.flush()
    else:
        print(lines[0], flush=True)


def _normalise(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return value


def _event_value(value: Any, db_value: Any) -> Any:
    if isinstance(db_value, datetime) and isinstance(value, str):
        return datetime.fromisoformat(value).astimezone(UTC)
    return value


def _verify(endpoints: StackEndpoints, tally: _Tally) -> list[str]:
    """Differences between the database and the latest event per key; empty when equal."""
    problems: list[str] = []
    with psycopg.connect(endpoints.postgres_dsn) as conn:
        for table in VERIFIED_TABLES:
            cursor = conn.execute(f"SELECT * FROM {table}")
            columns = [c.name for c in cursor.description or []]
            rows = {str(row[0]): dict(zip(columns, row, strict=True)) for row in cursor}
            on_topic = {
                key: image
                for (t, key), image in tally.latest.items()
                if t == table and image is not None
            }
            if set(rows) != set(on_topic):
                missing = sorted(set(rows) - set(on_topic))[:5]
                extra = sorted(set(on_topic) - set(rows))[:5]
                problems.append(f"{table}: keys differ (missing {missing}, extra {extra})")
                continue
            for key, row in rows.items():
                image = on_topic[key]
                for column, db_value in row.items():
                    if _event_value(image.get(column), db_value) != _normalise(db_value):
                        problems.append(f"{table} {key}.{column}: db {db_value!r} vs event")
                        break
    return problems


def _run_load_thread(
    dsn: str, rate: float, seconds: float, seed: int
) -> tuple[threading.Thread, list[Any]]:
    from consumer.dev.load import run_load

    result: list[Any] = []

    def target() -> None:
        result.append(run_load(dsn, rate=rate, seconds=seconds, rng_seed=seed, progress=False))

    thread = threading.Thread(target=target, name="demo-load", daemon=True)
    thread.start()
    return thread, result


def run(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    options = StackOptions(state_dir=state_dir, debezium_schemas=not args.no_schemas)
    print(
        "starting the local stack: broker, Postgres, Redis, Reach sandbox, Debezium ...", flush=True
    )
    stack = LocalStack(options)
    endpoints = stack.start()
    try:
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in stack.startup_seconds.items())
        print(f"ready ({timings})\nlogs in {endpoints.logs_dir}\n", flush=True)
        return _watch(endpoints, args)
    finally:
        print("stopping the local stack", flush=True)
        stack.stop()


def _watch(endpoints: StackEndpoints, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    tally = _Tally()
    view = _open_view(endpoints)
    started = time.monotonic()
    load_thread, load_result = _run_load_thread(
        endpoints.postgres_dsn, args.rate, args.seconds, args.seed
    )
    try:
        while load_thread.is_alive() or time.monotonic() - tally.last_event_at < QUIET_PERIOD_S:
            _drain(view, tally, REFRESH_S)
            _render(tally, time.monotonic() - started, not load_thread.is_alive(), tty)
            if time.monotonic() - started > args.seconds + CATCH_UP_TIMEOUT_S:
                break
    finally:
        view.close()
    if tty:
        sys.stdout.write("\x1b[J")
    _render(tally, time.monotonic() - started, True, tty=False)
    problems = _verify(endpoints, tally)
    print(f"\nworkload: {load_result[0] if load_result else 'did not finish'}")
    if problems:
        print(f"MISMATCH: {len(problems)} differences between the database and the topics:")
        for problem in problems[:10]:
            print(f"  {problem}")
        return 1
    counts = ", ".join(
        f"{t} {sum(1 for (tt, _), img in tally.latest.items() if tt == t and img)}"
        for t in VERIFIED_TABLES
    )
    print(f"verified: the latest change event of every key equals the database ({counts} rows)")
    return 0
