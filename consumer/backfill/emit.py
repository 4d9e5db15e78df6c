"""Dirty keys for walked ids: the same record, topic and key the router writes.

A backfill never writes to Reach itself: it makes entities dirty and the running syncer does the
rest, exactly as for a change. So there is one writer per entity (its dirty partition's owner)
and no ordering hazard between history and live changes (docs/design.md, "History").
``write`` returns once the broker acknowledged every key, with the offset after the last one
written to each partition of the dirty topic: the checkpoint keeps those, and "every entity of
the backfill has an outcome" is the syncer's committed offsets passing them. A scheduled
resource's keys go to the scheduled topic instead (``dirty_topic_of``) and return no offsets:
they are sent at the resource's next run, which a backfill does not wait for (run.py refuses
to wait on one; docs/design.md, "Scheduled delivery").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.config import SyncDefinition
from consumer.errors import Retryable
from consumer.kafka import producer_settings
from consumer.router.dirty import Cause, DirtyKey, EntityId, dirty_message_key, encode_dirty

__all__ = ["DirtyWriter"]

ACK_TIMEOUT_S = 60.0
QUEUE_FULL_POLL_S = 0.1


class DirtyWriter:
    def __init__(self, definition: SyncDefinition) -> None:
        self._definition = definition
        self._topic = definition.topics.dirty
        self._offsets: dict[int, int] = {}
        self._failures: list[KafkaError] = []
        self._producer = Producer(
            producer_settings(definition.source.kafka, on_delivery=self._on_delivery)
        )

    async def write(self, resource: str, ids: Sequence[EntityId], cause: Cause) -> dict[int, int]:
        """Produce one dirty key per id; raise Retryable unless every one was acknowledged."""
        return await asyncio.to_thread(self._write, resource, ids, cause)

    def _write(self, resource: str, ids: Sequence[EntityId], cause: Cause) -> dict[int, int]:
        self._offsets, self._failures = {}, []
        enqueued_ms = int(time.time() * 1000)
        topic = self._definition.dirty_topic_of(resource)
        for entity_id in ids:
            value = encode_dirty(DirtyKey(resource, entity_id, cause, enqueued_ms))
            self._produce(topic, dirty_message_key(resource, entity_id), value)
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while (outstanding := self._producer.flush(1.0)) > 0:
            if time.monotonic() > deadline:
                raise Retryable(f"{outstanding} dirty keys unacknowledged after {ACK_TIMEOUT_S} s")
        for error in self._failures:
            if error.fatal():
                raise KafkaException(error)
        if self._failures:
            raise Retryable(f"dirty keys not written: {self._failures[0].str()}")
        return dict(self._offsets)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                self._producer.poll(QUEUE_FULL_POLL_S)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(error)
            return
        partition, offset = message.partition(), message.offset()
        if message.topic() != self._topic:
            return  # the scheduled topic: nothing for the syncer's commits to pass
        if partition is not None and offset is not None and offset >= 0:
            self._offsets[partition] = max(offset + 1, self._offsets.get(partition, 0))

    def close(self) -> None:
        self._producer.flush(ACK_TIMEOUT_S)
