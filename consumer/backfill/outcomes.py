"""What became of a backfill's keys: sent, skipped as unchanged, or dead-lettered.

Counted from the topics that record outcomes, for the keys whose cause names one of the
backfill's runs: the audit (every record Reach accepted and every delete; its write-ahead
``sending`` records are not outcomes and are not counted) and the dead-letter topic. A key with
neither was skipped as unchanged (dedup), since the syncer commits a key only once it has an
outcome. Read from the offsets the topics had when the backfill started, so the read is as long
as the backfill's share, not the topics' history. An entity whose window also held eight
earlier live changes keeps only those causes and counts as skipped (the audit keeps the first
eight causes of a window).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
from confluent_kafka import Consumer

from consumer.config import SyncDefinition
from consumer.records.audit import SENDING, decode_audit
from consumer.records.deadletter import DeadLetterRecord
from consumer.records.dlq_read import MissingTopic, end_offsets, messages_to_end, reader_settings
from consumer.router.dirty import Cause

__all__ = ["Outcomes", "count_outcomes", "topic_ends"]

_dead_letter = msgspec.json.Decoder(DeadLetterRecord)


@dataclass(frozen=True, slots=True)
class Outcomes:
    keys: int
    sent: int
    deleted: int
    dead_lettered: int

    @property
    def skipped(self) -> int:
        return max(0, self.keys - self.sent - self.deleted - self.dead_lettered)

    def describe(self) -> str:
        return (
            f"{self.keys:,} keys: {self.sent:,} sent, {self.deleted:,} deleted, "
            f"{self.skipped:,} skipped unchanged, {self.dead_lettered:,} dead-lettered"
        )


def topic_ends(definition: SyncDefinition) -> dict[str, dict[int, int]]:
    """The audit and dead-letter topics' ends now: where a backfill's outcomes start."""
    consumer = Consumer(reader_settings(definition.source.kafka))
    try:
        ends = {}
        for topic in (definition.topics.audit, definition.topics.dead_letter):
            try:
                ends[topic] = end_offsets(consumer, topic)
            except MissingTopic:
                ends[topic] = {}
        return ends
    finally:
        consumer.close()


async def count_outcomes(
    definition: SyncDefinition, runs: Iterable[str], keys: int, since: dict[str, dict[int, int]]
) -> Outcomes:
    return await asyncio.to_thread(_count, definition, frozenset(runs), keys, since)


def _count(
    definition: SyncDefinition, runs: frozenset[str], keys: int, since: dict[str, dict[int, int]]
) -> Outcomes:
    # Sets: an entity sent twice (a retry after an ambiguous answer) is one outcome.
    sent: set[tuple[str, str]] = set()
    deleted: set[tuple[str, str]] = set()
    dead: set[tuple[str, str]] = set()
    audit, dead_letters = definition.topics.audit, definition.topics.dead_letter
    consumer = Consumer(reader_settings(definition.source.kafka))
    try:
        for value in _values(consumer, audit, since.get(audit, {})):
            try:
                record = decode_audit(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if record.outcome != SENDING and _ours(record.causes, runs):
                entity = (record.resource, record.id)
                (deleted if record.kind == "delete" else sent).add(entity)
        consumer.unassign()
        for value in _values(consumer, dead_letters, since.get(dead_letters, {})):
            try:
                letter = _dead_letter.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if _ours((letter.cause,), runs):
                dead.add((letter.resource, str(letter.id)))
    finally:
        consumer.close()
    return Outcomes(keys, len(sent), len(deleted), len(dead - sent - deleted))


def _values(consumer: Consumer, topic: str, starts: dict[int, int]) -> Iterable[bytes]:
    try:
        ends = end_offsets(consumer, topic)
    except MissingTopic:
        return
    for message in messages_to_end(consumer, topic, ends, starts):
        value = message.value()
        if value:
            yield value


def _ours(causes: Iterable[Cause], runs: frozenset[str]) -> bool:
    return any(c.run is not None and c.run in runs for c in causes)
