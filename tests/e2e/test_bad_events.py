"""Bad input never stalls a partition: malformed events go to the dead-letter topic with the
reason, and a real change behind them in the same partition still reaches Reach. On an Avro
stack the bad events are Avro's own: an unknown schema id, a payload its writer schema does not
read, a JSON envelope on the Avro topic."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, Message, Producer
from reach_devstack.stack import StackEndpoints

from consumer.router.avro import is_avro
from tests.e2e.helpers import (
    Sandbox,
    assert_converged,
    caught_up,
    headers_of,
    insert_customer,
    pipeline_thread,
    read_topic,
    sql,
    wait_for,
)

SCHEMA = "shop_customers"
TOPIC = "shop.public.customers"
MARKER = "e2e-bad-event"
DECODE_ERROR = "consumer.router.debezium.DecodeError"
UNKNOWN_TABLE = "consumer.router.triggers.UnknownTable"
UNKNOWN_SCHEMA_ID = "consumer.router.avro.UnknownSchemaId"


def _envelope(op: str, table: str, row: dict[str, object]) -> bytes:
    """A Debezium change envelope in Kafka Connect's JSON with the schema block (abridged)."""
    payload = {
        "before": None,
        "after": row,
        "source": {"schema": "public", "table": table, "ts_ms": 1, "lsn": 1},
        "op": op,
        "ts_ms": 1,
    }
    return json.dumps({"schema": {"type": "struct"}, "payload": payload}).encode()


# name -> (key, value, the error class the dead letter must name)
BAD_EVENTS: dict[str, tuple[bytes | None, bytes, str]] = {
    "bad-json": (b'{"id": 1}', b'{"payload": {"op": "u", "after": {"id": 1', DECODE_ERROR),
    "unknown-op": (b'{"id": 1}', _envelope("x", "customers", {"id": 1}), DECODE_ERROR),
    "missing-key": (None, _envelope("u", "customers", {"id": 1}), DECODE_ERROR),
    # Well formed, on a topic the router subscribes to, but no trigger names public.ghosts.
    "unknown-table": (b'{"id": 7}', _envelope("c", "ghosts", {"id": 7}), UNKNOWN_TABLE),
}


def _avro_bad_events(endpoints: StackEndpoints) -> dict[str, tuple[bytes | None, bytes, str]]:
    """On an Avro stack: a real Debezium message of the topic, mangled; an id the registry never
    gave; a JSON envelope on the Avro topic; no key."""
    sample = read_topic(
        endpoints.bootstrap_servers,
        TOPIC,
        lambda messages: any(is_avro(m.value()) for m in messages),
        timeout_s=30,
    )
    real = next(m for m in sample if is_avro(m.value()))
    key, value = real.key(), real.value() or b""
    unknown = b"\x00" + (2**31 - 1).to_bytes(4, "big") + value[5:]
    return {
        "unknown-schema-id": (key, unknown, UNKNOWN_SCHEMA_ID),
        "cut-short": (key, value[: len(value) // 2], DECODE_ERROR),
        "trailing-bytes": (key, value + b"\x00\x02", DECODE_ERROR),
        "not-avro": (b'{"id": 1}', _envelope("u", "customers", {"id": 1}), DECODE_ERROR),
        "missing-key": (None, value, DECODE_ERROR),
    }


def _partitions(bootstrap: str, topic: str) -> list[int]:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-meta-{uuid.uuid4()}"})
    try:
        return sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
    finally:
        reader.close()


def test_malformed_events_are_dead_lettered_and_work_goes_on(
    shop_stack: StackEndpoints, unique: Callable[[str], str]
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("badevents")
    run_id = uuid.uuid4().hex
    customer, tenant = insert_customer(dsn, 3, "behind-bad@example.com", last_name="before")
    external_id = str(customer)

    with pipeline_thread(shop_stack, name) as running:
        caught_up(running, lambda: bool(sandbox.history(tenant, SCHEMA, external_id)))
        dead_before = running.counters()["router_dead_lettered"]

        # Every kind of bad event into every partition of the customers topic, acknowledged...
        bad_events = (
            BAD_EVENTS if shop_stack.source_format == "json" else _avro_bad_events(shop_stack)
        )
        partitions = _partitions(shop_stack.bootstrap_servers, TOPIC)
        producer = Producer({"bootstrap.servers": shop_stack.bootstrap_servers, "acks": "all"})
        sent: dict[str, tuple[bytes | None, bytes, str]] = {}
        for partition in partitions:
            for kind, (key, value, error_class) in bad_events.items():
                tag = f"{run_id}:{kind}:{partition}"
                marker: list[tuple[str, str | bytes | None]] = [(MARKER, tag.encode())]
                producer.produce(TOPIC, value, key, partition=partition, headers=marker)
                sent[tag] = (key, value, error_class)
        assert producer.flush(30) == 0
        # ...then a real change: its event lands behind a bad event whatever its partition.
        sql(dsn, ("UPDATE customers SET last_name = %s WHERE id = %s", (run_id, customer)))

        wait_for(
            lambda: (sandbox.current(tenant, SCHEMA, external_id) or {}).get("lastName") == run_id,
            60,
            "the change behind the bad events in the sandbox",
            guard=running.check_alive,
        )

        def ours(messages: list[Message]) -> dict[str, Message]:
            found = {}
            for message in messages:
                tag = headers_of(message).get(MARKER)
                if tag is not None and tag.decode() in sent:
                    found[tag.decode()] = message
            return found

        dead_letters = ours(
            read_topic(
                shop_stack.bootstrap_servers,
                running.definition.topics.dead_letter,
                lambda messages: len(ours(messages)) == len(sent),
                timeout_s=60,
            )
        )
        assert running.counters()["router_dead_lettered"] - dead_before >= len(sent)
        running.check_alive()
        assert_converged(running.definition, shop_stack)

    assert sorted(dead_letters) == sorted(sent)
    for tag, message in dead_letters.items():
        key, value, error_class = sent[tag]
        context = headers_of(message)
        from_partition = tag.rsplit(":", 1)[1]
        # The original event, unchanged, with where it came from and why it was rejected.
        assert (message.key(), message.value()) == (key, value), tag
        assert context["reach-sync-dlq-kind"] == b"event", tag
        assert context["reach-sync-dlq-reason"].strip(), tag
        assert context["reach-sync-dlq-error-class"].decode() == error_class, (tag, context)
        assert context["reach-sync-dlq-stage"] == b"router", tag
        assert context["reach-sync-dlq-topic"].decode() == TOPIC, tag
        assert context["reach-sync-dlq-partition"].decode() == from_partition, tag
