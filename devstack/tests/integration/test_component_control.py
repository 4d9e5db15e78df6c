"""One component of a running LocalStack stopped, started, restarted: same port, and the data
each keeps (Postgres its rows, Redis nothing, the durable broker its topics and offsets, Debezium
its offsets); the memory broker and the durable broker's storage refuse to stop alone."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from reach_devstack.debezium import READY_MARKER
from reach_devstack.process import ComponentError
from reach_devstack.stack import LocalStack, StackEndpoints, StackOptions


# Without Debezium and the seeded shop: the servers alone start in about a second.
@pytest.fixture(scope="module")
def stack(state_root: Path) -> Iterator[LocalStack]:
    options = StackOptions(state_root / "control-memory", with_debezium=False, seed_shop=False)
    with LocalStack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def durable_stack(state_root: Path) -> Iterator[LocalStack]:
    options = StackOptions(
        state_root / "control-durable", with_debezium=False, seed_shop=False, durable_broker=True
    )
    with LocalStack(options) as stack:
        yield stack


def _endpoints(stack: LocalStack) -> StackEndpoints:
    assert stack.endpoints is not None
    return stack.endpoints


def test_postgres_keeps_its_rows_and_redis_comes_back_empty(
    stack: LocalStack, unique: Callable[[str], str]
) -> None:
    ep = _endpoints(stack)
    table, key = unique("kept"), unique("key")
    with psycopg.connect(ep.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v text)")
        conn.execute(f"INSERT INTO {table} VALUES ('before the stop')")
    cache = redis.Redis.from_url(ep.redis_url)
    cache.set(key, "before the restart")
    old_pids = stack.current_pids()

    stack.stop_component("postgres")
    assert stack.health()["postgres"] == "stopped"
    assert "postgres" not in stack.current_pids()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ep.postgres_dsn, connect_timeout=2)
    stack.start_component("postgres")
    assert stack.health()["postgres"] == "running"
    # Same DSN: same port and credentials; and the row written before the stop.
    with psycopg.connect(ep.postgres_dsn) as conn:
        assert conn.execute(f"SELECT v FROM {table}").fetchall() == [("before the stop",)]

    stack.restart_component("redis")
    assert stack.health()["redis"] == "running"
    assert cache.get(key) is None  # no persistence, by design
    assert cache.ping()

    pids = stack.current_pids()
    assert pids["postgres"] != old_pids["postgres"] and pids["redis"] != old_pids["redis"]
    assert pids["broker"] == old_pids["broker"]
    assert _endpoints(stack).pids == pids
    assert set(stack.health().values()) == {"running"}


def test_a_running_component_is_not_started_twice_and_unknown_ones_are_named(
    stack: LocalStack,
) -> None:
    with pytest.raises(ComponentError, match="already running"):
        stack.start_component("redis")
    with pytest.raises(ComponentError) as unknown:
        stack.restart_component("kafka")
    assert str(unknown.value) == (
        "kafka: no such component in this stack; it has: broker, redis, sandbox, postgres"
    )


def test_the_memory_broker_is_not_stopped_alone(stack: LocalStack) -> None:
    broker_pid = stack.current_pids()["broker"]
    for action in (stack.stop_component, stack.restart_component):
        with pytest.raises(ComponentError) as refused:
            action("broker")
        assert "memory storage: a broker restart loses every topic and offset" in str(refused.value)
        assert "--durable-broker" in str(refused.value)
    assert stack.current_pids()["broker"] == broker_pid
    assert stack.health()["broker"] == "running"


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def _read(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < count and time.monotonic() < deadline:
        for message in consumer.consume(count - len(values), timeout=0.5):
            assert message.error() is None, message.error()
            values.append(message.value() or b"")
    return values


def test_the_durable_broker_keeps_topics_and_offsets_across_a_restart(
    durable_stack: LocalStack, unique: Callable[[str], str]
) -> None:
    bootstrap = _endpoints(durable_stack).bootstrap_servers
    topic, group = unique("durable"), unique("group")
    # One partition, read by assignment: offsets are simple to state, and no group join (slow
    # on this broker) is needed to commit or read a group's offsets.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent = [f"m{i}".encode() for i in range(20)]
    for value in sent:
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    first = _consumer(bootstrap, group)
    first.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    assert _read(first, 8) == sent[:8]
    first.commit(offsets=[TopicPartition(topic, 0, 8)], asynchronous=False)
    first.close()
    # Tansu waits about 5 s for connected clients when asked to stop; these are done.
    del admin, producer

    durable_stack.restart_component("broker")
    assert durable_stack.health()["broker"] == "running"

    resumed = _consumer(bootstrap, group)
    assert resumed.committed([TopicPartition(topic, 0)], timeout=30)[0].offset == 8
    resumed.assign([TopicPartition(topic, 0)])  # from the group's committed offset
    assert _read(resumed, 12) == sent[8:]
    resumed.close()
    fresh = _consumer(bootstrap, unique("group"))
    fresh.assign([TopicPartition(topic, 0)])
    assert _read(fresh, 20) == sent
    fresh.close()


def test_the_durable_brokers_storage_is_not_stopped_alone(durable_stack: LocalStack) -> None:
    with pytest.raises(ComponentError, match="holds the durable broker's topics"):
        durable_stack.restart_component("s3")
    assert durable_stack.health()["s3"] == "running"


def test_debezium_resumes_from_its_offsets_after_a_restart(state_root: Path) -> None:
    """No second snapshot, and ready only once the new runner streams (not on the old marker)."""
    options = StackOptions(
        state_root / "control-debezium",
        seed_customers=20,
        seed_transactions=30,
        debezium_tables=("public.customers",),
        debezium_schemas=False,
    )
    with LocalStack(options) as stack:
        ep = _endpoints(stack)
        old_pid = stack.current_pids()["debezium"]
        stack.restart_component("debezium")
        new_pid = stack.current_pids()["debezium"]
        assert new_pid != old_pid
        marker = json.loads((stack.state_dir / "debezium" / READY_MARKER).read_text())
        assert marker["pid"] == new_pid
        with psycopg.connect(ep.postgres_dsn) as conn:
            conn.execute("UPDATE customers SET email = 'x' || email WHERE id = 1")

        topic = f"{ep.topic_prefix}.public.customers"
        reader = _consumer(ep.bootstrap_servers, "unused")
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        values = _read(reader, 21)
        values += _read(reader, 1, timeout_s=1.0)  # nothing more: no second snapshot
        reader.close()
        ops = Counter(json.loads(v)["op"] for v in values if v)
        assert ops == {"r": 20, "u": 1}
