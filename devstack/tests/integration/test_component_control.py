"""One component of a running LocalStack stopped, started, restarted: same port, and the data
each keeps (Postgres its rows, Redis nothing, the durable broker its topics and offsets, its S3
server the objects holding them, Debezium its offsets); the memory broker refuses to stop alone.
And the durable broker's S3 server (SeaweedFS) keeps up with many small record batches, on
loopback ports of its own."""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
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
from reach_devstack import s3
from reach_devstack.debezium import READY_MARKER
from reach_devstack.process import ComponentError, ManagedProcess, wait_until
from reach_devstack.stack import (
    LOCAL_FETCH_WAIT_MS,
    LOCAL_SESSION_TIMEOUT_MS,
    LocalStack,
    StackEndpoints,
    StackOptions,
)


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


def test_the_durable_brokers_storage_restarts_with_its_topics(
    durable_stack: LocalStack, unique: Callable[[str], str]
) -> None:
    """Its objects are files on disk: the broker, left running, serves what it stored before."""
    bootstrap = _endpoints(durable_stack).bootstrap_servers
    topic = unique("stored")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    before = [f"before-{i}".encode() for i in range(10)]
    for value in before:
        producer.produce(topic, value)
    assert producer.flush(30) == 0
    broker_pid = durable_stack.current_pids()["broker"]

    durable_stack.stop_component("s3")
    # The broker stays up without its storage (requests that need it wait, then fail).
    assert durable_stack.health() == {
        "s3": "stopped",
        "broker": "running",
        "redis": "running",
        "sandbox": "running",
        "postgres": "running",
    }
    durable_stack.start_component("s3")
    assert durable_stack.health()["s3"] == "running"
    assert durable_stack.current_pids()["broker"] == broker_pid

    assert topic in admin.list_topics(timeout=30).topics
    after = [f"after-{i}".encode() for i in range(10)]
    for value in after:
        producer.produce(topic, value)
    assert producer.flush(60) == 0
    reader = _consumer(bootstrap, unique("group"))
    reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    assert _read(reader, 20) == before + after
    reader.close()


# About 800 bytes, as Debezium's events without the schema block.
PAYLOAD = b"x" * 800


def test_the_durable_broker_keeps_up_with_many_small_record_batches(
    durable_stack: LocalStack, unique: Callable[[str], str]
) -> None:
    """What stalled on moto's server (nothing fetched in 120 s): 2,000 records produced in 100
    flushes to 8 partitions, then read by a consumer group with the local fetch wait (10 ms)."""
    bootstrap = _endpoints(durable_stack).bootstrap_servers
    topic = unique("batches")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 8, 1)])[topic].result(timeout=30)
    failed: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    started = time.monotonic()
    for flush in range(100):
        for n in range(flush * 20, flush * 20 + 20):
            producer.produce(
                topic,
                PAYLOAD,
                key=str(n).encode(),
                on_delivery=lambda err, _msg: failed.append(str(err)) if err else None,
            )
        assert producer.flush(60) == 0
    produced_s = time.monotonic() - started
    assert failed == []

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("group"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": LOCAL_FETCH_WAIT_MS,
            "session.timeout.ms": LOCAL_SESSION_TIMEOUT_MS,
        }
    )
    consumer.subscribe([topic])
    started = time.monotonic()
    first_s = None
    keys: set[int] = set()
    while len(keys) < 2000 and time.monotonic() - started < 120:
        for message in consumer.consume(500, timeout=0.5):
            assert message.error() is None, message.error()
            keys.add(int(message.key() or b"-1"))
            first_s = first_s or time.monotonic() - started
    consumed_s = time.monotonic() - started
    consumer.close()
    assert keys == set(range(2000))
    # Shown with `pytest -rP`: the figures docs/local-stack.md quotes (the first record waits
    # for the group join).
    print(
        f"produced in {produced_s:.1f} s; after subscribing, the first record in "
        f"{first_s:.1f} s, all 2,000 in {consumed_s:.1f} s"
    )


def _tcp_sockets(pid: int) -> list[tuple[str, tuple[str, int], tuple[str, int]]]:
    """(state, local address, remote address) of each TCP socket the process holds, read from
    /proc: the kernel's own account, with nothing to install."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                state = "listen" if fields[3] == "0A" else fields[3]
                found.append((state, _address(fields[1], family), _address(fields[2], family)))
    return found


def _address(field: str, family: int) -> tuple[str, int]:
    """/proc/net/tcp's ``HEXADDR:HEXPORT``, the address in 32-bit words of host byte order."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words), int(port, 16)


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def test_each_s3_server_listens_on_loopback_ports_of_its_own(
    durable_stack: LocalStack, state_root: Path
) -> None:
    """Two more beside the stack's, all at once: nothing on a fixed port, no port shared, no
    connection to anything but loopback (no telemetry), and nothing left in /tmp after."""
    servers: list[tuple[s3.S3Ports, ManagedProcess]] = []
    try:
        for n in range(2):
            ports = s3.S3Ports.free()
            folder = state_root / f"s3-alone-{n}"
            process = ManagedProcess(s3.s3_spec(ports, folder / "data", folder))
            process.start()
            servers.append((ports, process))
        for ports, process in servers:
            wait_until(process, functools.partial(s3.s3_ready, ports.url), 60)

        stack_sockets = _tcp_sockets(durable_stack.current_pids()["s3"])
        stack_listening = {local for state, local, _ in stack_sockets if state == "listen"}
        assert len(stack_listening) == 8
        for ports, process in servers:
            assert process.pid is not None
            sockets = _tcp_sockets(process.pid)
            listening = {local for state, local, _ in sockets if state == "listen"}
            assert listening == {("127.0.0.1", port) for port in dataclasses.astuple(ports)}
            assert not listening & stack_listening
            assert all(_is_loopback(remote[0]) for state, _, remote in sockets if state != "listen")
    finally:
        for _, process in servers:
            process.stop()
    # And none of the Unix sockets weed names by port is left in /tmp.
    assert not [path for ports, _ in servers for path in s3.socket_paths(ports) if path.exists()]


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
