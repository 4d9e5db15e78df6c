"""Replaying dead letters: plan the dirty keys they stand for, then enqueue them.

The writing half of ``reach-sync dlq`` (reading is records/dlq_read.py), kept apart because it
is the only part that produces anything: planning is pure (no broker, no database) and tested on
its own; only ``enqueue`` talks to Kafka. A replay never re-sends what a dead letter holds: it
makes the entities dirty again with the router's encoder and key (router/dirty.py), so the
syncer recomputes them and a replay can never deliver a stale state. Ids are kept as the dead
letters hold them (the query casts them). Nothing is deleted from the dead-letter topic, and
replaying twice is harmless. Why: docs/design.md, "Reading the topics back".
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
from confluent_kafka import KafkaError, Message, Producer

from consumer.config import SyncDefinition
from consumer.errors import BadRecord, Retryable
from consumer.kafka import producer_settings
from consumer.records.deadletter import error_class
from consumer.records.dlq_read import Entry
from consumer.router.debezium import DecodeError, Ignored, decode_event
from consumer.router.dirty import (
    Cause,
    DirtyKey,
    EntityId,
    decode_dirty,
    dirty_message_key,
    encode_dirty,
)
from consumer.router.triggers import TriggerIndex, plan_dirty

__all__ = ["ReplayFailure", "ReplayPlan", "enqueue", "plan_replay"]

# The replay's produce: every outcome is reported within message.timeout.ms.
DELIVERY_TIMEOUT_MS = 30_000
ACK_TIMEOUT_S = DELIVERY_TIMEOUT_MS / 1000 + 5
QUEUE_FULL_POLL_S = 0.1
# The final wait for acknowledgements is cut into slices this long, for progress between them.
FLUSH_SLICE_S = 0.2


class ReplayFailure(Exception):
    """A dead letter that still cannot become a dirty key; reported, not dead-lettered again."""


class _Target(NamedTuple):
    resource: str
    id: EntityId
    table: str | None
    op: str | None


@dataclass
class ReplayPlan:
    """The dirty keys a replay produces (one per entity) and the dead letters that still fail.

    ``keys`` is keyed by ``(resource, str(id))``, as the syncer's window counts entities, so a
    record's ``"7"`` and an event's ``7`` are one entity and one dirty key.
    """

    keys: dict[tuple[str, str], DirtyKey] = field(default_factory=dict)
    failures: list[tuple[Entry, str]] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    replayed: int = 0

    def per_resource(self) -> Counter[str]:
        return Counter(key.resource for key in self.keys.values())


def plan_replay(entries: Iterable[Entry], definition: SyncDefinition, now_ms: int) -> ReplayPlan:
    """Turn dead letters into dirty keys, oldest first; an entity's first dead letter is its
    cause. Nothing is produced here, so a failure part-way leaves nothing half done."""
    index = TriggerIndex.from_definition(definition)
    plan = ReplayPlan()
    for entry in entries:
        try:
            targets = _targets(entry, definition, index)
        except ReplayFailure as exc:
            plan.failures.append((entry, str(exc)))
            continue
        if isinstance(targets, Ignored):
            plan.ignored[targets.reason] += 1
            continue
        if not targets:  # e.g. a null foreign key: a change that names no entity
            plan.ignored["no entity"] += 1
            continue
        plan.replayed += 1
        for target in targets:
            cause = Cause(
                kind="replay",
                table=target.table,
                op=target.op,
                topic=entry.at.topic,
                partition=entry.at.partition,
                offset=entry.at.offset,
            )
            plan.keys.setdefault(
                (target.resource, str(target.id)),
                DirtyKey(resource=target.resource, id=target.id, cause=cause, enqueued_ms=now_ms),
            )
    return plan


def _targets(
    entry: Entry, definition: SyncDefinition, index: TriggerIndex
) -> list[_Target] | Ignored:
    if entry.kind == "record" and entry.record is not None:
        record = entry.record
        _known_resource(definition, record.resource)
        return [_Target(record.resource, record.id, record.cause.table, record.cause.op)]
    if entry.kind == "event" and entry.stage == "syncer":
        return [_dirty_key_target(entry, definition)]
    if entry.kind == "event":
        return _routed_targets(entry, index)
    raise ReplayFailure(entry.reason)


def _dirty_key_target(entry: Entry, definition: SyncDefinition) -> _Target:
    """A dirty-topic message the syncer could not use: replayable once its resource exists."""
    try:
        dirty = decode_dirty(entry.value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ReplayFailure(f"still not a dirty key: {exc}") from exc
    _known_resource(definition, dirty.resource)
    return _Target(dirty.resource, dirty.id, dirty.cause.table, dirty.cause.op)


def _routed_targets(entry: Entry, index: TriggerIndex) -> list[_Target] | Ignored:
    """The router's own decode and trigger planning, with the current definition."""
    try:
        change = decode_event(entry.key, entry.value)
        if isinstance(change, Ignored):
            return change
        entities = plan_dirty(change, index)
    except (DecodeError, BadRecord) as exc:
        raise ReplayFailure(f"{error_class(exc)}: {exc}") from exc
    return [_Target(e.resource, e.id, change.table, change.op) for e in entities]


def _known_resource(definition: SyncDefinition, resource: str) -> None:
    if resource not in definition.resources:
        raise ReplayFailure(f"no resource {resource!r} in the definition any more")


def enqueue(
    keys: Iterable[DirtyKey],
    definition: SyncDefinition,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Produce dirty keys keyed ``resource/id`` and return how many once the broker acknowledged
    every one; raise Retryable if any was not (running the replay again is harmless).

    ``progress`` is told how many were acknowledged so far, as they are (consumer/cli/progress.py
    decides what to show): acknowledged, not produced, because produce only queues."""
    topic = definition.topics.dirty
    failures: list[KafkaError] = []
    acknowledged = 0

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        nonlocal acknowledged
        if error is not None:
            failures.append(error)
        else:
            acknowledged += 1

    producer = Producer(
        producer_settings(definition.source.kafka, **{"message.timeout.ms": DELIVERY_TIMEOUT_MS})
    )
    produced = 0
    for key in keys:
        message_key, value = dirty_message_key(key.resource, key.id), encode_dirty(key)
        while True:
            try:
                producer.produce(topic, value, message_key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(QUEUE_FULL_POLL_S)
        produced += 1
        if progress is not None:
            producer.poll(0)  # serve delivery reports, so the count moves while producing
            progress(acknowledged)
    left = _flush(producer, ACK_TIMEOUT_S, lambda: progress(acknowledged) if progress else None)
    if left or failures:
        first = failures[0].str() if failures else "no answer in time"
        raise Retryable(
            f"{left + len(failures)} of {produced} dirty keys were not acknowledged by {topic} "
            f"({first}); replaying again is harmless"
        )
    return produced


def _flush(producer: Producer, timeout_s: float, tick: Callable[[], None]) -> int:
    """``producer.flush(timeout_s)`` in short slices, calling ``tick`` between them; how many
    messages were still unacknowledged at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = producer.flush(min(FLUSH_SLICE_S, max(0.0, deadline - time.monotonic())))
        tick()
        if left == 0 or time.monotonic() >= deadline:
            return int(left)
