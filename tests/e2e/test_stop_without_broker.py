"""SIGTERM while the broker stops answering: `reach-sync run` still stops within its bound.

librdkafka's synchronous commit has no deadline of its own; with a broker that holds the
connection but never answers (hung, or a network partition; here SIGSTOP) it waits for the
group coordinator forever. A broker that is simply dead fails the commit within seconds
(_WAIT_COORD), which is why this test freezes it. The service's final commits (the syncer's on
shutdown, the router's in close) are bounded, a consumer whose commit never returned is
abandoned, and the process ends with os._exit. Before that fix a stopped process spun in its
final commit for hours; with the bound raised, this test fails.

reach-sync runs against a broker of its own, fed with the stack's real Debezium events, so that
this one can be killed without disturbing the other tests.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from reach_devstack import broker as broker_component
from reach_devstack.process import ManagedProcess, free_port, wait_until
from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import PipelineProcess, wait_for

CUSTOMERS_TOPIC = "shop.public.customers"
EVENTS = 20


def _copy_events(source: str, target: str, count: int) -> None:
    """Copy ``count`` real Debezium events of the customers topic from one broker to another."""
    reader = Consumer(
        {"bootstrap.servers": source, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        # Debezium may still be taking its snapshot when the stack has just started.
        wait_for(
            lambda: CUSTOMERS_TOPIC in reader.list_topics(timeout=10).topics,
            60,
            "Debezium's customers topic",
        )
        partitions = reader.list_topics(CUSTOMERS_TOPIC, timeout=10).topics[CUSTOMERS_TOPIC]
        reader.assign([TopicPartition(CUSTOMERS_TOPIC, p, 0) for p in partitions.partitions])
        events: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + 60
        while len(events) < count and time.monotonic() < deadline:
            message = reader.poll(1.0)
            if message is not None and message.error() is None and message.value():
                events.append((message.key(), message.value() or b""))
        assert len(events) == count, f"the stack's customers topic had {len(events)} events"
    finally:
        reader.close()
    admin = AdminClient({"bootstrap.servers": target})
    for future in admin.create_topics([NewTopic(CUSTOMERS_TOPIC, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": target})
    for key, value in events:
        producer.produce(CUSTOMERS_TOPIC, key=key, value=value)
    assert producer.flush(30) == 0


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """The sum of the group's committed offsets on ``topic`` (0 where none)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = reader.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
    finally:
        reader.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def _ends(bootstrap: str, topic: str, partitions: int) -> int:
    """The sum of ``topic``'s high watermarks (0 while it does not exist yet)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        return sum(
            reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    except KafkaException:
        return 0
    finally:
        reader.close()


def test_sigterm_after_the_broker_died_stops_within_the_bound(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    port = free_port()
    broker = ManagedProcess(broker_component.broker_spec(port, tmp_path / "broker-logs"))
    broker.start()
    bootstrap = f"127.0.0.1:{port}"
    process = None
    try:
        wait_until(broker, lambda: broker_component.broker_ready(bootstrap), 60)
        _copy_events(shop_stack.bootstrap_servers, bootstrap, EVENTS)
        own_broker = dataclasses.replace(shop_stack, bootstrap_servers=bootstrap)
        process = PipelineProcess(own_broker, unique("nobroker"), tmp_path)
        topics = process.definition.topics
        group = f"{process.definition.source.kafka.group_id}.syncer"
        process.start()
        # Both stages did all their work and committed it: the final commit has offsets to send,
        # and no window is left in flight. One still in flight at SIGTERM would wait for the
        # frozen broker (its audit flush) long enough for librdkafka to give the coordinator up,
        # and the final commit would then fail at once (_WAIT_COORD) instead of hanging.
        wait_for(
            lambda: (
                _committed(bootstrap, group, topics.dirty, topics.dirty_partitions)
                >= _ends(bootstrap, topics.dirty, topics.dirty_partitions)
                > 0
            ),
            90,
            "the syncer to commit every dirty key",
            guard=process.check_alive,
        )

        # SIGTERM to reach-sync, and the broker frozen while reach-sync drains.
        assert broker.pid is not None
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        os.kill(broker.pid, signal.SIGSTOP)

        code = process.wait_exit()  # at most STOP_BOUND_S
        log = process.log()
        assert code is not None
        assert "final commit of" in log and "unanswered" in log, log[-3000:]
    finally:
        if process is not None:
            process.ensure_stopped()
        broker.stop(grace_s=0)  # frozen: SIGTERM would wait for a SIGCONT
