"""The local broker speaks enough Kafka for us: produce, a consumer group of two, commits."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 4
MESSAGES = 2000
# Tansu completes a group join in about half of session.timeout.ms (docs/local-stack.md).
TEST_CONSUMER_SETTINGS = {
    "session.timeout.ms": 6000,
    "fetch.queue.backoff.ms": 10,
    "partition.assignment.strategy": "cooperative-sticky",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
}


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(timeout=10)


def _produce(bootstrap: str, topic: str, count: int) -> None:
    failures: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, key=f"k{i % 97}", value=f"v{i}", on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failures == []


def _consumer(bootstrap: str, group: str, topic: str) -> Consumer:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, **TEST_CONSUMER_SETTINGS}
    )
    consumer.subscribe([topic])
    return consumer


def _wait_for_balanced_assignment(members: list[Consumer], timeout_s: float = 60) -> None:
    """Poll (the topic is still empty) until both members hold disjoint partitions."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for member in members:
            member.poll(0.1)
        owned = [{tp.partition for tp in member.assignment()} for member in members]
        if all(owned) and not owned[0] & owned[1] and len(owned[0] | owned[1]) == PARTITIONS:
            return
    raise AssertionError(f"no balanced assignment: {[m.assignment() for m in members]}")


def _drain(
    members: list[Consumer], expected: int, timeout_s: float = 60, commit: bool = True
) -> list[Counter[str]]:
    """Read until ``expected`` messages arrived in all; commit each member's batch as it goes."""
    seen: list[Counter[str]] = [Counter() for _ in members]
    deadline = time.monotonic() + timeout_s
    while sum(sum(c.values()) for c in seen) < expected and time.monotonic() < deadline:
        for member, counter in zip(members, seen, strict=True):
            batch = member.consume(500, timeout=0.2)
            for msg in batch:
                if msg.error():
                    raise KafkaException(msg.error())
                counter[msg.value().decode()] += 1
            if batch and commit:
                member.commit(asynchronous=False)
    return seen


def test_group_of_two_shares_partitions_and_commits(
    broker: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("roundtrip"), unique("group")
    _create_topic(broker, topic)
    members = [_consumer(broker, group, topic) for _ in range(2)]
    try:
        _wait_for_balanced_assignment(members)
        _produce(broker, topic, MESSAGES)
        seen = _drain(members, MESSAGES)
    finally:
        for member in members:
            member.close()

    everything = seen[0] + seen[1]
    assert sum(everything.values()) == MESSAGES
    assert set(everything.values()) == {1}, "a message was delivered twice"
    assert seen[0] and seen[1], "both members of the group should have read a share"
    assert not set(seen[0]) & set(seen[1])

    # The group's committed offsets cover every message, and reading from them yields only
    # what came after. (Read by assignment: a fresh member joining a group whose members left
    # sometimes gets no assignment from Tansu 0.6.0; see the issue note.)
    _produce(broker, topic, 10)
    late = Consumer({"bootstrap.servers": broker, "group.id": group, **TEST_CONSUMER_SETTINGS})
    try:
        committed = late.committed(
            [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10
        )
        assert sum(tp.offset for tp in committed) == MESSAGES
        late.assign(committed)
        (after,) = _drain([late], 10, commit=False)
    finally:
        late.close()
    assert sum(after.values()) == 10
    assert set(after) == {f"v{i}" for i in range(10)}
