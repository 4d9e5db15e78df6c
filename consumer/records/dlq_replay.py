"""Replaying dead letters: plan the dirty keys they stand for, then enqueue them.

The writing half of ``reach-sync dlq`` (reading is records/dlq_read.py), kept apart because it
is the only part that produces anything: planning is pure (no broker; a lookup trigger's query is
passed in as ``look_up``) and tested on its own; only ``enqueue`` talks to Kafka. A replay never
re-sends what a dead letter holds: it makes the entities dirty again with the router's encoder and
key (router/dirty.py), so the syncer recomputes them and a replay can never deliver a stale state.
Ids are kept as the dead letters hold them (the query casts them). Nothing is deleted from the
dead-letter topic, and replaying twice is harmless. Why: docs/design.md, "Reading the topics back".
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
from confluent_kafka import KafkaError, Message, Producer

from consumer.config import SyncDefinition
from consumer.errors import BadRecord, Retryable
from consumer.kafka import producer_settings
from consumer.records.deadletter import error_class
from consumer.records.dlq_read import Entry
from consumer.router.debezium import DecodeError, Ignored
from consumer.router.dirty import (
    Cause,
    DirtyKey,
    EntityId,
    decode_dirty,
    dirty_message_key,
    encode_dirty,
)
from consumer.router.formats import SourceDecoder
from consumer.router.lookups import Found, lookup_triggers
from consumer.router.triggers import LookupInput, TriggerIndex, plan_change

# A lookup trigger's query, as router/lookups.py's LookupDatabase.look_up runs it.
LookUp = Callable[[str, int, str, Sequence[str]], list[Found]]

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


def plan_replay(
    entries: Iterable[Entry],
    definition: SyncDefinition,
    now_ms: int,
    look_up: LookUp | None = None,
    decoder: SourceDecoder | None = None,
) -> ReplayPlan:
    """Turn dead letters into dirty keys, oldest first; an entity's first dead letter is its
    cause. Events of lookup triggers are mapped to their entities as the router does, one
    ``look_up`` per trigger for all of them (Retryable when it fails; required when such an
    event is replayed). Events are decoded as the router decodes them (``decoder``, by default
    the definition's format and registry: an Avro event's schema is fetched again; Retryable
    when the registry cannot answer). Nothing is produced here, so a failure part-way leaves
    nothing half done."""
    if decoder is None:
        own = SourceDecoder.for_source(definition.source.kafka)
        try:
            return plan_replay(entries, definition, now_ms, look_up, own)
        finally:
            own.close()
    index = TriggerIndex.from_definition(definition)
    plan = ReplayPlan()
    inputs: dict[tuple[str, int], dict[str, Cause]] = {}
    for entry in entries:
        try:
            targets, lookups, origin = _targets(entry, definition, index, decoder)
        except ReplayFailure as exc:
            plan.failures.append((entry, str(exc)))
            continue
        if isinstance(targets, Ignored):
            plan.ignored[targets.reason] += 1
            continue
        if not targets and not lookups:  # e.g. a null foreign key: names no entity
            plan.ignored["no entity"] += 1
            continue
        plan.replayed += 1
        for target in targets:
            plan.keys.setdefault(
                (target.resource, str(target.id)),
                DirtyKey(target.resource, target.id, _cause(entry, target), now_ms),
            )
        for wanted in lookups:
            cause = _cause(entry, _Target(wanted.resource, wanted.value, *origin))
            inputs.setdefault((wanted.resource, wanted.trigger), {}).setdefault(wanted.value, cause)
    if inputs:
        _looked_up(definition, inputs, look_up, plan, now_ms)
    return plan


def _looked_up(
    definition: SyncDefinition,
    inputs: dict[tuple[str, int], dict[str, Cause]],
    look_up: LookUp | None,
    plan: ReplayPlan,
    now_ms: int,
) -> None:
    if look_up is None:
        raise Retryable("replaying events of lookup triggers needs the source database")
    triggers = lookup_triggers(definition)
    for (resource, position), causes in inputs.items():
        lookup = triggers[(resource, position)].lookup
        assert lookup is not None  # lookup_triggers holds only triggers with one
        first = next(iter(causes.values()))
        for found in look_up(resource, position, lookup, list(causes)):
            cause = causes.get(found.input, first) if found.input is not None else first
            plan.keys.setdefault(
                (resource, str(found.entity_id)),
                DirtyKey(resource, found.entity_id, cause, now_ms),
            )


def _cause(entry: Entry, target: _Target) -> Cause:
    return Cause(
        kind="replay",
        table=target.table,
        op=target.op,
        topic=entry.at.topic,
        partition=entry.at.partition,
        offset=entry.at.offset,
    )


_Origin = tuple[str | None, str | None]  # the table and op of the change, for the cause
_NO_ORIGIN: _Origin = (None, None)


def _targets(
    entry: Entry, definition: SyncDefinition, index: TriggerIndex, decoder: SourceDecoder
) -> tuple[list[_Target] | Ignored, list[LookupInput], _Origin]:
    if entry.kind == "record" and entry.record is not None:
        record = entry.record
        _known_resource(definition, record.resource)
        target = _Target(record.resource, record.id, record.cause.table, record.cause.op)
        return [target], [], _NO_ORIGIN
    if entry.kind == "event" and entry.stage == "syncer":
        return [_dirty_key_target(entry, definition)], [], _NO_ORIGIN
    if entry.kind == "event":
        return _routed_targets(entry, index, decoder)
    raise ReplayFailure(entry.reason)


def _dirty_key_target(entry: Entry, definition: SyncDefinition) -> _Target:
    """A dirty-topic message the syncer could not use: replayable once its resource exists."""
    try:
        dirty = decode_dirty(entry.value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ReplayFailure(f"still not a dirty key: {exc}") from exc
    _known_resource(definition, dirty.resource)
    return _Target(dirty.resource, dirty.id, dirty.cause.table, dirty.cause.op)


def _routed_targets(
    entry: Entry, index: TriggerIndex, decoder: SourceDecoder
) -> tuple[list[_Target] | Ignored, list[LookupInput], _Origin]:
    """The router's own decode and trigger planning, with the current definition."""
    try:
        change = decoder.decode(entry.key, entry.value)
        if isinstance(change, Ignored):
            return change, [], _NO_ORIGIN
        planned = plan_change(change, index)
    except (DecodeError, BadRecord) as exc:
        raise ReplayFailure(f"{error_class(exc)}: {exc}") from exc
    targets = [_Target(e.resource, e.id, change.table, change.op) for e in planned.entities]
    return targets, planned.lookups, (change.table, change.op)


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
    topics: set[str] = set()
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
                topic = definition.dirty_topic_of(key.resource)  # scheduled ones wait for a run
                producer.produce(topic, value, message_key, on_delivery=on_delivery)
                topics.add(topic)
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
        where = ", ".join(sorted(topics)) or definition.topics.dirty
        raise Retryable(
            f"{left + len(failures)} of {produced} dirty keys were not acknowledged by {where} "
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
