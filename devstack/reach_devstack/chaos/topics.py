"""Reading a whole topic from outside reach-sync: the dead letters and the audit of a run.

No consumer group: every partition is assigned from its beginning and read to its
end-of-partition event, with the product's own readers (consumer/records/dlq_read.py), which
know the local broker's trailing high watermark.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, Message

from consumer.records.deadletter import HEADER_KIND, HEADER_REASON
from consumer.records.dlq_read import MissingTopic, end_offsets, messages_to_end

__all__ = ["DeadLetter", "dead_letters", "read_topic"]


def read_topic(bootstrap_servers: str, topic: str) -> list[Message]:
    """Every message of ``topic`` now; none if it does not exist."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            # Required by librdkafka; an assigned consumer never joins it.
            "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            # The local broker holds an empty fetch for the whole wait (docs/local-stack.md).
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        try:
            ends = end_offsets(consumer, topic)
        except MissingTopic:
            return []
        return list(messages_to_end(consumer, topic, ends))
    finally:
        consumer.close()


@dataclass(frozen=True)
class DeadLetter:
    kind: str  # event | record
    key: bytes | None
    value: bytes | None
    reason: str
    # The router's (or syncer's) produce time, epoch seconds.
    produced_at: float

    @property
    def record_key(self) -> str:
        """A record's dead letter is keyed ``resource/id``."""
        return (self.key or b"").decode("utf-8", "replace")


def _header(message: Message, name: str) -> str:
    """The last header called ``name`` (an event's dead letter keeps its own headers first)."""
    raw = message.headers() or []
    found = ""
    for key, value in raw.items() if isinstance(raw, dict) else raw:
        if key == name and value is not None:
            found = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return found


def dead_letters(bootstrap_servers: str, topic: str) -> list[DeadLetter]:
    return [
        DeadLetter(
            _header(m, HEADER_KIND),
            m.key(),
            m.value(),
            _header(m, HEADER_REASON),
            m.timestamp()[1] / 1000.0,
        )
        for m in read_topic(bootstrap_servers, topic)
    ]
