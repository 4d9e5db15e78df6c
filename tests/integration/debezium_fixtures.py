"""Helpers for tests that need the Debezium runner: start it, read what it produced.

The servers themselves (broker, Postgres, a fresh database) are fixtures of
reach_devstack.pytest_fixtures (registered by the root conftest.py). What is here is plain
functions and a context manager rather than fixtures, so a test module can build the fixtures it
needs without importing fixture names (which linters rightly flag).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from reach_devstack.debezium import DebeziumSettings, debezium_command, is_ready
from reach_devstack.postgres import PostgresConfig
from reach_devstack.process import ManagedProcess, ProcessSpec, wait_until

# A JVM start plus a small snapshot takes about 4-5 s on a 2-core machine; leave room for load.
DEBEZIUM_READY_TIMEOUT_S = 60.0
SHOP_TABLES = ("public.merchants", "public.customers", "public.transactions")


@dataclass
class RunningDebezium:
    """A started runner: its process, settings, and how long it took to become ready."""

    process: ManagedProcess
    settings: DebeziumSettings
    ready_after_s: float

    def stop(self) -> float:
        """SIGTERM and wait; returns the seconds it took to exit."""
        started = time.monotonic()
        self.process.stop()
        return time.monotonic() - started


def debezium_settings(
    database: PostgresConfig,
    bootstrap: str,
    state_dir: Path,
    topic_prefix: str,
    slot_name: str,
    *,
    schemas: bool = True,
    tables: tuple[str, ...] = SHOP_TABLES,
) -> DebeziumSettings:
    """Settings for one test: its own topic prefix and slot, so tests never share a stream."""
    password_file = state_dir / "pg-password"
    state_dir.mkdir(parents=True, exist_ok=True)
    password_file.write_text(database.password)
    password_file.chmod(0o600)
    return DebeziumSettings(
        bootstrap_servers=bootstrap,
        pg_host="127.0.0.1",
        pg_port=database.port,
        pg_user=database.user,
        pg_password_file=password_file,
        pg_database=database.database,
        topic_prefix=topic_prefix,
        tables=tables,
        state_dir=state_dir,
        schemas=schemas,
        slot_name=slot_name,
        publication_name=slot_name,
    )


@contextmanager
def running_debezium(settings: DebeziumSettings, log_path: Path) -> Iterator[RunningDebezium]:
    """Start the runner as the lead's supervisor would, wait until ready, stop it afterwards."""
    process = ManagedProcess(
        ProcessSpec(name="debezium", argv=debezium_command(settings), log_path=log_path)
    )
    started = time.monotonic()
    process.start()
    try:
        wait_until(
            process, lambda: is_ready(settings.state_dir), DEBEZIUM_READY_TIMEOUT_S, "streaming"
        )
        yield RunningDebezium(process, settings, time.monotonic() - started)
    finally:
        process.stop()


@dataclass(frozen=True)
class Message:
    """One record as a consumer sees it, decoded enough for assertions."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None

    @property
    def key_json(self) -> Any:
        return None if self.key is None else json.loads(self.key)

    @property
    def value_json(self) -> Any:
        return None if self.value is None else json.loads(self.value)


def read_until(
    bootstrap: str,
    topics: list[str],
    done: Callable[[list[Message]], bool],
    timeout_s: float = 30.0,
    partitions: int = 4,
) -> list[Message]:
    """Read the topics from the beginning until ``done(messages)`` holds or time runs out.

    Partitions are assigned, not subscribed: no group join to wait for, and no committed offset
    to depend on. Counting what we expect is the end condition, because the local broker's high
    watermark is not exact (docs/local-stack.md).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "debezium-tests-unused",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign(
        [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)]
    )
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(messages) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.2):
                topic, partition = msg.topic(), msg.partition()
                if msg.error() is None and topic is not None and partition is not None:
                    messages.append(Message(topic, partition, msg.key(), msg.value()))
    finally:
        consumer.close()
    return messages


def java_murmur2_partition(key: bytes, partitions: int) -> int:
    """Kafka's Java default partitioner: positive murmur2(key) modulo the partition count."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    mask = 0xFFFFFFFF
    length = len(key)
    h = (seed ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= key[base + 2] << 16
    if tail >= 2:
        h ^= key[base + 1] << 8
    if tail >= 1:
        h ^= key[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions
