"""How far the syncer is on the dirty topic, read from its consumer group's committed offsets.

Two questions a backfill asks of it. Pacing: how many dirty keys wait for the syncer (its lag),
so that a backfill never queues more than a few windows' worth ahead of live changes, whatever
the walk's speed. Outcomes: have the syncer's commits passed the offsets this backfill wrote?
The syncer commits an offset only once every key before it reached a durable outcome (sent and
accepted, skipped as unchanged, or dead-lettered), so that is exactly "every entity has an
outcome". The consumer here never joins the group and never commits: it only reads.
"""

from __future__ import annotations

import asyncio

from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.config import SyncDefinition
from consumer.errors import Retryable
from consumer.kafka import consumer_settings

__all__ = ["SyncerPosition", "syncer_group"]

BROKER_TIMEOUT_S = 10.0


def syncer_group(definition: SyncDefinition) -> str:
    return f"{definition.source.kafka.group_id}.syncer"


class SyncerPosition:
    def __init__(self, definition: SyncDefinition) -> None:
        self._topic = definition.topics.dirty
        self._consumer = Consumer(
            consumer_settings(
                definition.source.kafka,
                syncer_group(definition),
                **{"allow.auto.create.topics": False},
            )
        )

    async def lag(self) -> int:
        """Dirty keys written and not yet committed by the syncer, over every partition."""
        return await asyncio.to_thread(self._lag)

    async def behind(self, written: dict[int, int]) -> int:
        """How many of ``written``'s partitions the syncer has not committed up to yet."""
        return await asyncio.to_thread(self._behind, written)

    def _lag(self) -> int:
        try:
            metadata = self._consumer.list_topics(self._topic, timeout=BROKER_TIMEOUT_S)
            topic = metadata.topics.get(self._topic)
            if topic is None or topic.error is not None:
                return 0
            committed = self._committed(sorted(topic.partitions))
            total = 0
            for partition, offset in committed.items():
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=BROKER_TIMEOUT_S, cached=False
                )
                total += max(0, high - (offset if offset >= 0 else low))
            return total
        except KafkaException as exc:
            raise Retryable(f"reading the syncer's position: {exc.args[0]}") from exc

    def _behind(self, written: dict[int, int]) -> int:
        if not written:
            return 0
        try:
            committed = self._committed(sorted(written))
        except KafkaException as exc:
            raise Retryable(f"reading the syncer's position: {exc.args[0]}") from exc
        return sum(1 for p, end in written.items() if committed.get(p, -1) < end)

    def _committed(self, partitions: list[int]) -> dict[int, int]:
        found = self._consumer.committed(
            [TopicPartition(self._topic, p) for p in partitions], timeout=BROKER_TIMEOUT_S
        )
        return {tp.partition: tp.offset for tp in found}

    def close(self) -> None:
        self._consumer.close()
