"""The stack with ``format="avro"``: Debezium writes Avro in the Confluent wire format, its
schemas in the stack's registry, as Kafka Connect with Confluent's AvroConverter would.

Real Postgres, broker, registry and Debezium: SQL in; keys and values out that carry magic byte
0 and a schema id the registry serves, and that decode with that schema; tombstones stay null.
The registry is a component like the others: restarted, it serves the ids it issued; stopped,
changes of known schemas keep flowing (the converter caches ids), and a change that needs a new
schema stops Debezium, which resumes from its offsets once the registry is back.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import httpx
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from reach_devstack.stack import LocalStack, StackEndpoints, StackOptions, stack_env

TABLE = "public.customers"
READ_TIMEOUT_S = 60.0
# Debezium stops within its delivery loop's poll once the converter fails; a JVM is not quick.
DEBEZIUM_EXIT_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def stack(state_root: Path) -> Iterator[LocalStack]:
    options = StackOptions(
        state_root / "debezium-avro",
        format="avro",
        seed_customers=5,
        seed_transactions=5,
        debezium_tables=(TABLE,),
    )
    with LocalStack(options) as running:
        yield running


def _endpoints(stack: LocalStack) -> StackEndpoints:
    assert stack.endpoints is not None
    return stack.endpoints


@dataclass(frozen=True)
class Decoded:
    key_id: int
    key: dict[str, Any]
    value_id: int | None
    value: dict[str, Any] | None  # None: a tombstone


class _Avro:
    """Decodes the Confluent wire format with the writer schemas the registry serves (each
    fetched once, as a deserializer caches them)."""

    def __init__(self, registry_url: str) -> None:
        self.registry_url = registry_url
        self.schemas: dict[int, Any] = {}

    def schema_id(self, data: bytes) -> int:
        assert len(data) > 5
        assert data[0] == 0, f"magic byte {data[0]}, not the Confluent wire format"
        return int.from_bytes(data[1:5], "big")

    def decode(self, data: bytes) -> tuple[int, dict[str, Any]]:
        schema_id = self.schema_id(data)
        if schema_id not in self.schemas:
            answer = httpx.get(f"{self.registry_url}/schemas/ids/{schema_id}", timeout=5.0)
            assert answer.status_code == 200, answer.text
            self.schemas[schema_id] = fastavro.parse_schema(json.loads(answer.json()["schema"]))
        record = fastavro.schemaless_reader(io.BytesIO(data[5:]), self.schemas[schema_id])
        assert isinstance(record, dict)
        return schema_id, record

    def message(self, key: bytes, value: bytes | None) -> Decoded:
        key_id, key_record = self.decode(key)
        if value is None:
            return Decoded(key_id, key_record, None, None)
        value_id, value_record = self.decode(value)
        return Decoded(key_id, key_record, value_id, value_record)


def _read(
    bootstrap: str, topic: str, done: Callable[[list[tuple[bytes, bytes | None]]], bool]
) -> list[tuple[bytes, bytes | None]]:
    """(key, value) of every message of ``topic`` from the start, until ``done`` holds."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[tuple[bytes, bytes | None]] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while not done(messages):
            assert time.monotonic() < deadline, f"{topic}: only {len(messages)} messages"
            for message in consumer.consume(100, timeout=0.5):
                assert message.error() is None, message.error()
                key = message.key()
                assert key is not None
                messages.append((key, message.value()))
        return messages
    finally:
        consumer.close()


def _execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _changes_of(avro: _Avro, messages: list[tuple[bytes, bytes | None]], row: int) -> list[str]:
    """The ops of ``row``'s messages in order; a tombstone is "tombstone"."""
    ops = []
    for key, value in messages:
        decoded = avro.message(key, value)
        if decoded.key["id"] == row:
            ops.append("tombstone" if decoded.value is None else decoded.value["op"])
    return ops


def test_inserts_updates_and_deletes_arrive_as_avro_the_registry_can_decode(
    stack: LocalStack,
) -> None:
    ep = _endpoints(stack)
    assert ep.source_format == "avro" and ep.schema_registry_url is not None
    env = stack_env(ep)
    assert env["REACH_SYNC_SCHEMA_REGISTRY_URL"] == ep.schema_registry_url
    assert env["REACH_SYNC_SOURCE_FORMAT"] == "avro"
    _execute(
        ep.postgres_dsn,
        "INSERT INTO customers (id, merchant_id, email) VALUES (9001, 1, 'new@example.com')",
        "UPDATE customers SET email = 'changed@example.com' WHERE id = 9001",
        "DELETE FROM customers WHERE id = 9001",
    )
    avro = _Avro(ep.schema_registry_url)
    topic = f"{ep.topic_prefix}.{TABLE}"
    messages = _read(ep.bootstrap_servers, topic, lambda ms: len(_changes_of(avro, ms, 9001)) >= 4)

    decoded = [avro.message(key, value) for key, value in messages]
    snapshot = [d for d in decoded if d.value is not None and d.value["op"] == "r"]
    assert sorted(d.key["id"] for d in snapshot) == [1, 2, 3, 4, 5]
    mine = [d for d in decoded if d.key["id"] == 9001]
    assert [d.value["op"] if d.value else None for d in mine] == ["c", "u", "d", None]
    created, updated, deleted, tombstone = mine
    assert created.value is not None and updated.value is not None and deleted.value is not None
    assert created.value["after"]["id"] == 9001
    assert updated.value["after"]["email"] == "changed@example.com"
    assert deleted.value["after"] is None and deleted.value["before"]["id"] == 9001
    for d in (created, updated, deleted):
        assert d.value is not None
        assert d.value["source"]["table"] == "customers"
        assert d.value["source"]["schema"] == "public"
    assert tombstone.value_id is None

    # One key schema and one value schema, each registered under the topic's subjects.
    assert {d.key_id for d in decoded} == {created.key_id}
    assert {d.value_id for d in decoded if d.value_id is not None} == {created.value_id}
    registry = ep.schema_registry_url
    key_latest = httpx.get(f"{registry}/subjects/{topic}-key/versions/latest").json()
    value_latest = httpx.get(f"{registry}/subjects/{topic}-value/versions/latest").json()
    assert (key_latest["id"], value_latest["id"]) == (created.key_id, created.value_id)
    assert json.loads(value_latest["schema"])["name"] == "Envelope"


def test_heartbeats_are_avro_too(stack: LocalStack) -> None:
    ep = _endpoints(stack)
    assert ep.schema_registry_url is not None
    avro = _Avro(ep.schema_registry_url)
    heartbeats = _read(ep.bootstrap_servers, f"__debezium-heartbeat.{ep.topic_prefix}", bool)
    key, value = heartbeats[0]
    assert value is not None
    assert avro.decode(key)[1] == {"serverName": ep.topic_prefix}
    assert avro.decode(value)[1]["ts_ms"] > 0


def test_a_restarted_registry_serves_the_ids_debezium_used(stack: LocalStack) -> None:
    ep = _endpoints(stack)
    registry = ep.schema_registry_url
    assert registry is not None
    subjects = httpx.get(f"{registry}/subjects").json()
    assert len(subjects) == 4  # the table's and the heartbeats' keys and values
    ids = {httpx.get(f"{registry}/subjects/{s}/versions/latest").json()["id"] for s in subjects}
    before = {i: httpx.get(f"{registry}/schemas/ids/{i}").json() for i in ids}
    assert all("schema" in answer for answer in before.values())
    old_pid = stack.current_pids()["registry"]

    stack.restart_component("registry")
    assert stack.health()["registry"] == "running"
    assert stack.current_pids()["registry"] != old_pid
    after = {i: httpx.get(f"{registry}/schemas/ids/{i}").json() for i in ids}
    assert after == before
    assert httpx.get(f"{registry}/subjects").json() == subjects


def test_a_stopped_registry_holds_up_only_changes_that_need_a_new_schema(
    stack: LocalStack,
) -> None:
    """Known schemas flow on from the converter's cache; a new column needs a registration, so
    Debezium stops, and resumes from its offsets once the registry and it are started again.
    (Last in this module: it changes the table.)"""
    ep = _endpoints(stack)
    assert ep.schema_registry_url is not None
    avro = _Avro(ep.schema_registry_url)
    topic = f"{ep.topic_prefix}.{TABLE}"
    # The schemas the topic has so far, fetched while the registry runs: this test's reader
    # then decodes offline, as Debezium's converter produces from its cache.
    snapshot = _read(ep.bootstrap_servers, topic, lambda ms: len(ms) >= 5)
    known = [avro.message(k, v) for k, v in snapshot]
    value_ids = {d.value_id for d in known if d.value_id is not None}
    stack.stop_component("registry")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{ep.schema_registry_url}/subjects", timeout=2.0)
    _execute(ep.postgres_dsn, "UPDATE customers SET email = 'cached@example.com' WHERE id = 2")
    messages = _read(ep.bootstrap_servers, topic, lambda ms: "u" in _changes_of(avro, ms, 2))
    update = next(
        d
        for d in (avro.message(k, v) for k, v in messages)
        if d.key["id"] == 2 and d.value is not None and d.value["op"] == "u"
    )
    assert update.value_id in value_ids
    assert stack.health()["debezium"] == "running"
    stack.start_component("registry")

    stack.stop_component("registry")
    _execute(
        ep.postgres_dsn,
        "ALTER TABLE customers ADD COLUMN nickname text",
        "UPDATE customers SET nickname = 'nick' WHERE id = 3",
    )
    deadline = time.monotonic() + DEBEZIUM_EXIT_TIMEOUT_S
    while stack.health()["debezium"] == "running":
        assert time.monotonic() < deadline, "Debezium went on without registering a schema"
        time.sleep(0.5)
    assert stack.health()["debezium"] == "exited with code 1"

    stack.start_component("registry")
    stack.start_component("debezium")
    messages = _read(ep.bootstrap_servers, topic, lambda ms: "u" in _changes_of(avro, ms, 3))
    updated = [
        d
        for d in (avro.message(k, v) for k, v in messages)
        if d.key["id"] == 3 and d.value is not None and d.value["op"] == "u"
    ]
    assert updated[-1].value is not None
    assert updated[-1].value["after"]["nickname"] == "nick"
    versions = httpx.get(f"{ep.schema_registry_url}/subjects/{topic}-value/versions").json()
    assert versions == [1, 2]
