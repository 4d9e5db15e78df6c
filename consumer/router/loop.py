"""Stage 1, the router: Debezium change events in, dirty keys out, keyed by entity.

Every change is planned into the entities it makes dirty (router/triggers.py) and produced to the
dirty topic keyed ``resource/id``, so each entity has one owner in stage 2 (docs/design.md, "Why
two stages"). Events that trigger nothing are counted; unusable ones are dead-lettered. Lookup
triggers' inputs are collected over the batch and looked up once per trigger (router/lookups.py).

A batch is consumed and routed while the one before it is still being acknowledged; then that
one is settled (acknowledged, committed) and the new one produced. A source offset is committed
only after every dirty key and dead letter up to it was acknowledged; a failed delivery rewinds
both batches (dirty keys are idempotent). A revoke, which runs inside ``consume``, settles the
batch in flight first. More: docs/design.md, "The router".
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from consumer.config import SyncDefinition
from consumer.errors import BadRecord, Retryable
from consumer.kafka import (
    commit_in_rebalance,
    commit_reporter,
    commit_within,
    consume_batch,
    consumer_settings,
    describe_partitions,
    producer_settings,
    release_consumer,
)
from consumer.observe.progress import PartitionProgress, ProgressTracker, high_watermark
from consumer.observe.spans import traceparent_of
from consumer.records.deadletter import DeadLetterEvent, Headers, dead_letter_message
from consumer.retry_policy import retry_delay
from consumer.router.avro import RegistryUnavailable, UnknownSchemaId
from consumer.router.debezium import Change, DecodeError, Ignored
from consumer.router.dirty import (
    MAX_CAUSES,
    Cause,
    DirtyKey,
    EntityId,
    dirty_message_key,
    encode_dirty,
)
from consumer.router.formats import SourceDecoder
from consumer.router.lookups import LookupDatabase, check_queries, lookup_triggers
from consumer.router.topics import check_replica_identity, ensure_topics, subscription
from consumer.router.triggers import DirtyEntity, TriggerIndex, plan_change

__all__ = ["ConsumerFactory", "ProducerFactory", "Router", "RouterStats", "cause_of", "run_router"]

log = logging.getLogger(__name__)

# Events per batch: large enough to amortise one acknowledgement wait and one commit round trip
# (measured with bench/router.py), small enough to bound what is re-routed after a failure.
BATCH_MAX_EVENTS = 2000
# How long the loop waits for a first event; also how soon it notices the stop flag.
POLL_TIMEOUT_S = 0.5
# The producer reports every message's outcome within message.timeout.ms; 30 s is well inside
# librdkafka's max.poll.interval.ms default (300 s), so a stalled produce never costs the group.
DELIVERY_TIMEOUT_MS = 30_000
ACK_TIMEOUT_S = DELIVERY_TIMEOUT_MS / 1000 + 5
# A batch's dirty keys travel while the next batch is routed: a short linger sends them then,
# rather than at the flush that settles them (bench/router.py: about 10% more events/s than
# with 100 ms). Without a next batch the flush sends them at once, whatever linger.ms says.
PRODUCER_LINGER_MS = 5
# A revoke or a shutdown waits at most this long for outstanding deliveries before committing
# what was already acknowledged.
DRAIN_TIMEOUT_S = 10.0
# A commit is given this long; librdkafka's own synchronous commit has no deadline and never
# returns once the broker is gone (kafka.commit_within).
COMMIT_BOUND_S = 15.0
# How long the router takes at most to stop once asked: a batch's acknowledgements and commit,
# then close()'s drain, final commit and release. run_service waits this long for its thread.
STOP_BOUND_S = ACK_TIMEOUT_S + DRAIN_TIMEOUT_S + 3 * COMMIT_BOUND_S + POLL_TIMEOUT_S
# Backoff after a failed delivery (retry_policy: full jitter, from the base up to the cap).
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
# Waiting for the producer's queue to drain when it is full (BufferError).
QUEUE_FULL_POLL_S = 0.1

# Make the router's Kafka clients from librdkafka settings: Kafka's own, or a test's stand-ins.
ConsumerFactory = Callable[[dict[str, Any]], Consumer]
ProducerFactory = Callable[[dict[str, Any]], Producer]

_PartitionKey = tuple[str, int]
# A lookup trigger: its resource and its position in the resource's triggers.
_LookupKey = tuple[str, int]


@dataclass
class RouterStats:
    """What the router did since it started; ``ignored`` counts by Debezium reason."""

    events: int = 0
    changes: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    # Entities planned from changes; dirty_keys is fewer when one batch triggers an entity twice.
    triggers: int = 0
    dirty_keys: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    retries: int = 0
    # Lookup queries run (one per lookup trigger per batch with inputs) and entities they found.
    lookups: int = 0
    looked_up: int = 0
    # Avro: batches routed again because the schema registry could not answer, and events
    # dead-lettered because it does not know their schema id.
    registry_unavailable: int = 0
    unknown_schema_ids: int = 0

    def snapshot(self) -> RouterStats:
        return copy.deepcopy(self)


def run_router(
    definition: SyncDefinition,
    stop: threading.Event,
    *,
    on_stats: Callable[[RouterStats], None] | None = None,
    progress: ProgressTracker | None = None,
    consumer_factory: ConsumerFactory = Consumer,
    producer_factory: ProducerFactory = Producer,
) -> RouterStats:
    """Route until ``stop`` is set, then drain, commit and release the consumer.

    Startup fails with ConfigurationError if a trigger table's replica identity contradicts the
    definition or a lookup or query fails with no ids, and with Retryable if the database or
    broker cannot be reached. ``progress`` (readiness) is told each assigned partition's
    position and high watermark as the loop runs.
    """
    check_replica_identity(definition)
    lookups = LookupDatabase(definition.source.database)
    try:
        check_queries(definition, lookups)
        ensure_topics(definition)
        router = Router(
            definition,
            lookups,
            on_stats,
            progress,
            consumer_factory=consumer_factory,
            producer_factory=producer_factory,
        )
        try:
            router.run(stop)
        finally:
            router.close()
    finally:
        lookups.close()
    return router.stats


class Router:
    """One router: its consumer (subscribed when made), its producer, and the loop over them.
    ``run_router`` checks the definition against the database and broker first; a test makes
    one directly, with stand-ins for the Kafka clients."""

    def __init__(
        self,
        definition: SyncDefinition,
        lookups: LookupDatabase,
        on_stats: Callable[[RouterStats], None] | None,
        progress: ProgressTracker | None = None,
        *,
        consumer_factory: ConsumerFactory = Consumer,
        producer_factory: ProducerFactory = Producer,
    ) -> None:
        kafka = definition.source.kafka
        self.stats = RouterStats()
        self._definition = definition
        self._lookups = lookups
        self._lookup_sql = {
            key: trigger.lookup or "" for key, trigger in lookup_triggers(definition).items()
        }
        self._on_stats = on_stats
        self._progress = progress
        self._index = TriggerIndex.from_definition(definition)
        self._decoder = SourceDecoder.for_source(kafka, self._index.image_columns())
        # Per resource: the dirty topic, or the scheduled topic for a scheduled resource.
        self._topic_of = {name: definition.dirty_topic_of(name) for name in definition.resources}
        self._dead_letter_topic = definition.topics.dead_letter
        self._failures: list[KafkaError] = []
        self._done: dict[_PartitionKey, int] = {}  # next offset to commit, acknowledged
        self._failures_in_a_row = 0
        # The batch produced and not yet settled, and the error a revoke saw it fail with.
        self._sent: _Sent | None = None
        self._sent_failed: Retryable | None = None
        self._producer = producer_factory(
            producer_settings(
                kafka,
                **{
                    "message.timeout.ms": DELIVERY_TIMEOUT_MS,
                    "linger.ms": PRODUCER_LINGER_MS,
                    # Successes need no callback: flush() returning 0 says they all completed.
                    "delivery.report.only.error": True,
                    "on_delivery": self._on_delivery,
                },
            )
        )
        self._consumer = consumer_factory(
            consumer_settings(
                kafka,
                f"{kafka.group_id}.router",
                on_commit=commit_reporter("router", self._commit_failed),
            )
        )
        self._assigned: set[_PartitionKey] = set()
        self._consumer.subscribe(
            subscription(kafka),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("router subscribed to %s as %s.router", subscription(kafka), kafka.group_id)

    # --- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._observe_progress()
            self._one_batch(stop)

    def _one_batch(self, stop: threading.Event) -> None:
        """Consume and route a batch, settle the one in flight, then produce the new one.

        With a batch in flight the consume does not wait: when nothing has arrived, that batch
        is settled at once (its dirty keys are not held back for the poll's timeout). A method
        of its own so that the batch (2,000 source events of a few KB) is let go before the
        next one is consumed; only its offsets stay, in ``_sent``.
        """
        in_flight = self._sent is not None and self._sent_failed is None
        batch = consume_batch(
            self._consumer, BATCH_MAX_EVENTS, 0.0 if in_flight else POLL_TIMEOUT_S
        )
        routed: _Routed | None = None
        error: Retryable | None = None
        if batch:
            try:
                routed = self._route(batch)
            except Retryable as exc:
                error = exc
        try:
            self._settle(ACK_TIMEOUT_S)
        except Retryable as exc:
            error = exc  # the batch in flight failed: it is routed again, with this one
        if error is not None:
            if isinstance(error, RegistryUnavailable):
                self.stats.registry_unavailable += 1
            self._rewind(_first_offsets(batch), error, stop)
            return
        if routed is not None:
            self._emit(routed.pending, routed.unusable)
            self._sent = _Sent(routed.first, routed.next_offsets)

    def _settle(self, timeout_s: float) -> None:
        """Await the batch in flight, then commit it: raise Retryable if any of its output
        failed (or failed already, seen by a revoke), keeping it in ``_sent`` for the rewind."""
        if self._sent is None:
            return
        if self._sent_failed is not None:
            raise self._sent_failed
        self._acknowledge(timeout_s)
        self._commit()
        self._report()

    def _acknowledge(self, timeout_s: float) -> None:
        """Await everything produced; then the batch in flight (unless a revoke saw it fail)
        is done, its offsets to commit. Retryable if any output failed, the batch staying in
        ``_sent`` for the rewind. Commits nothing: a revoke commits from its callback."""
        self._await_acknowledgements(timeout_s)
        sent = self._sent
        if sent is not None and self._sent_failed is None:
            self._sent = None
            self._mark_done(sent.next_offsets)

    def close(self) -> None:
        """Drain what is in flight (bounded), commit what is acknowledged, release the consumer.

        Acknowledged offsets are committed even when the batch in flight failed: they lie
        before it (kept from an earlier commit that failed), so its next owner reads less again.
        """
        try:
            try:
                if self._sent is None:
                    self._await_acknowledgements(DRAIN_TIMEOUT_S)
                else:
                    self._settle(DRAIN_TIMEOUT_S)
            except Retryable as exc:
                log.warning("router stopping with unacknowledged output: %s", exc)
            self._commit()
        finally:
            self._decoder.close()
            leave = self._definition.source.kafka.leave_group_on_close
            release_consumer(self._consumer, leave_group=leave)

    # --- routing ----------------------------------------------------------------------------

    def _route(self, batch: list[Message]) -> _Routed:
        """Plan the dirty keys and dead letters of every event in the batch, with the first and
        the next offset of each partition it covers; nothing is produced yet.

        An entity triggered several times in one batch gets one dirty key (its first cause,
        a few later ones, and the count): the batch is committed as a whole, so the merged key
        stands for every event behind it, and the syncer would coalesce them anyway.

        Lookup inputs are gathered over the whole batch, each with the cause of its first
        event, and looked up once per trigger before anything is produced: a failed lookup
        raises Retryable with nothing of the batch sent, and the batch is routed again.
        """
        pending: dict[DirtyEntity, _Merged] = {}
        next_offsets: dict[_PartitionKey, int] = {}
        first: dict[_PartitionKey, int] = {}
        inputs: dict[_LookupKey, dict[str, Cause]] = {}
        unusable: list[tuple[Message, Exception]] = []
        decode, index, ignored = self._decoder.decode, self._index, self.stats.ignored
        events = changes = triggers = 0  # counted here, added once: this runs once per event
        for message in batch:
            if message.error() is not None and _consume_error(message):
                continue
            events += 1
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is not None and partition is not None and offset is not None:
                where = (topic, partition)
                first.setdefault(where, offset)  # a partition's events come in order
                next_offsets[where] = offset + 1
            try:
                event = decode(message.key(), message.value(), topic)
                if isinstance(event, Ignored):
                    ignored[event.reason] += 1
                    continue
                changes += 1
                entities, lookup_inputs = plan_change(event, index)
            except (DecodeError, BadRecord) as exc:
                if isinstance(exc, UnknownSchemaId):
                    self.stats.unknown_schema_ids += 1
                unusable.append((message, exc))
                continue
            triggers += len(entities)
            cause: Cause | None = None  # built only if kept: a hot entity's 9th cause is not
            for entity in entities:
                merged = pending.get(entity)
                if merged is None:
                    cause = cause or cause_of(message, topic, partition, offset, event)
                    pending[entity] = _Merged(cause)
                    continue
                # _Merged.add, inline so the cause is built only when it is kept.
                merged.triggers += 1
                if len(merged.later) < _MAX_LATER:
                    cause = cause or cause_of(message, topic, partition, offset, event)
                    merged.later.append(cause)
            for looked in lookup_inputs:
                causes = inputs.setdefault((looked.resource, looked.trigger), {})
                if looked.value not in causes:
                    cause = cause or cause_of(message, topic, partition, offset, event)
                    causes[looked.value] = cause
        stats = self.stats
        stats.events += events
        stats.changes += changes
        stats.triggers += triggers
        self._look_up(inputs, pending)
        return _Routed(pending, unusable, first, next_offsets)

    def _emit(
        self,
        pending: dict[DirtyEntity, _Merged],
        unusable: list[tuple[Message, Exception]],
    ) -> None:
        """Produce the batch's dead letters, then its dirty keys."""
        for message, error in unusable:
            self._dead_letter(message, error)
        enqueued_ms = int(time.time() * 1000)
        produce, topic_of = self._producer.produce, self._topic_of
        for (resource, entity_id), merged in pending.items():
            key = merged.dirty_key(resource, entity_id, enqueued_ms)
            topic, value = topic_of[resource], encode_dirty(key)
            message_key = dirty_message_key(resource, entity_id)
            try:  # the common case without _produce's call: once per dirty key
                produce(topic, value, message_key)
            except BufferError:
                self._produce(topic, message_key, value)
        self.stats.dirty_keys += len(pending)

    def _look_up(
        self,
        inputs: dict[_LookupKey, dict[str, Cause]],
        pending: dict[DirtyEntity, _Merged],
    ) -> None:
        """Run each lookup once for the batch's inputs and merge what it finds into ``pending``.

        A found entity carries the cause of the input it came from when the lookup returns that
        input as its second column, else the cause of the trigger's first input in the batch:
        a lookup needs only say which entities, and the cause is still a real source event.
        """
        for (resource, position), causes in inputs.items():
            self.stats.lookups += 1
            found = self._lookups.look_up(
                resource, position, self._lookup_sql[(resource, position)], list(causes)
            )
            self.stats.looked_up += len(found)
            self.stats.triggers += len(found)
            first = next(iter(causes.values()))
            for entity in found:
                cause = first if entity.input is None else causes.get(entity.input, first)
                dirty = DirtyEntity(resource, entity.entity_id)
                merged = pending.get(dirty)
                if merged is None:
                    pending[dirty] = _Merged(cause)
                else:
                    merged.add(cause)

    def _dead_letter(self, message: Message, error: Exception) -> None:
        letter = DeadLetterEvent.from_message(message, error)
        log.warning(
            "dead-lettering %s[%d]@%d: %s (%s)",
            letter.topic,
            letter.partition,
            letter.offset,
            letter.reason,
            letter.error_class,
        )
        key, value, headers = dead_letter_message(letter)
        self._produce(self._dead_letter_topic, key, value, headers)
        self.stats.dead_lettered += 1

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> None:
        """Produce, waiting for room when the producer's queue is full (bounded memory)."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self._producer.poll(QUEUE_FULL_POLL_S)

    # --- acknowledgements and offsets -------------------------------------------------------

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(error)

    def _await_acknowledgements(self, timeout_s: float) -> None:
        """Return once every produced message is acknowledged; else raise Retryable."""
        deadline = time.monotonic() + timeout_s
        while (outstanding := self._producer.flush(1.0)) > 0:
            if time.monotonic() > deadline:
                raise Retryable(
                    f"{outstanding} produced messages unacknowledged after {timeout_s} s"
                )
        failures, self._failures = self._failures, []
        for error in failures:
            if error.fatal():
                raise KafkaException(error)
        if failures:
            raise Retryable(f"{len(failures)} deliveries failed, first: {failures[0].str()}")

    def _rewind(
        self, batch_first: dict[_PartitionKey, int], error: Retryable, stop: threading.Event
    ) -> None:
        """Seek each partition back to the first event of the batch in flight, or of the batch
        just consumed (``batch_first``), and back off before retrying. Partitions given up
        meanwhile are left to their next owner, which reads from their last commit.

        The stats are reported here too, so that a router stuck on a failing lookup or delivery
        shows its growing ``retries`` rather than the stats of its last good batch.
        """
        self.stats.retries += 1
        self._failures_in_a_row += 1
        delay = retry_delay(
            self._failures_in_a_row,
            base_s=RETRY_BASE_S,
            cap_s=RETRY_CAP_S,
            retry_after_s=error.retry_after_s,
        )
        log.warning("routing again after %.1f s: %s", delay, error)
        first = dict(batch_first)
        if self._sent is not None:  # earlier in each partition than the batch consumed after it
            first.update(self._sent.first)
        self._sent, self._sent_failed = None, None
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._assigned:
                self._consumer.seek(TopicPartition(topic, partition, offset))
        self._report()
        stop.wait(delay)

    def _mark_done(self, next_offsets: dict[_PartitionKey, int]) -> None:
        """Offsets of an acknowledged batch, to commit; not those of partitions lost while it
        was in flight, which may belong to another member by now."""
        self._failures_in_a_row = 0
        self.stats.batches += 1
        self._done.update((k, v) for k, v in next_offsets.items() if k in self._assigned)

    def _commit(self, partitions: set[_PartitionKey] | None = None) -> None:
        """Commit acknowledged offsets synchronously; keep whatever failed for the next commit.

        1. take the acknowledged next-offsets (of ``partitions``, or all);
        2. commit them synchronously;
        3. forget each partition whose commit succeeded and did not move meanwhile.
        """
        offsets = {k: v for k, v in self._done.items() if partitions is None or k in partitions}
        if not offsets:
            return
        try:
            results = commit_within(
                self._consumer,
                [TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                COMMIT_BOUND_S,
            )
        except KafkaException as exc:
            self._commit_failed()
            log.warning("commit failed, kept for the next one: %s", exc.args[0])
            return
        if results is None:
            self._commit_failed()
            log.warning("commit unanswered after %.0f s, kept for the next one", COMMIT_BOUND_S)
            return
        self.stats.commits += 1
        for tp in results:
            key = (tp.topic, tp.partition)
            if tp.error is None and self._done.get(key) == offsets.get(key):
                del self._done[key]

    def _report(self) -> None:
        if self._on_stats is not None:
            self._on_stats(self.stats.snapshot())

    def _observe_progress(self) -> None:
        """For readiness, at most once a second: each assigned partition's position (between
        batches: past the batch in flight, which is committed within the next batch) and high
        watermark. Local reads of librdkafka's state, from this thread, which owns the
        consumer."""
        now = time.monotonic()
        if self._progress is None or not self._progress.due(now):
            return
        try:
            positions = self._consumer.position(self._consumer.assignment())
        except KafkaException as exc:
            log.debug("no progress for readiness: %s", exc)
            return
        self._progress.observe(
            [
                PartitionProgress(
                    tp.topic,
                    tp.partition,
                    tp.offset if tp.offset >= 0 else None,  # unknown until a message, or rewound
                    high_watermark(self._consumer, tp.topic, tp.partition),
                )
                for tp in positions
            ],
            now,
        )

    # --- rebalance --------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """One info line per assignment (cooperative rebalancing hands over the added ones)."""
        added = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned |= added
        if added:
            log.info(
                "router assigned %d partitions: %s; %d in all",
                len(added),
                describe_partitions(added),
                len(self._assigned),
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish what is in flight (bounded), commit the revoked partitions, let them go.

        A batch in flight that fails here is routed again once the callback returned (its
        partitions that stay assigned; ``_settle`` raises its error), and none of it is
        committed now."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self._acknowledge(DRAIN_TIMEOUT_S)
        except Retryable as exc:
            if self._sent is not None:
                self._sent_failed = exc
            log.warning("revoked with unacknowledged output, not committing it: %s", exc)
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._done.items() if (t, p) in revoked]
        try:
            commit_in_rebalance(self._consumer, offsets)
        except KafkaException as exc:
            self._commit_failed()
            log.warning("final commit of revoked partitions failed: %s", exc)
        self._forget(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost partitions may already belong to another member: never commit them."""
        lost = {(tp.topic, tp.partition) for tp in partitions}
        log.warning("partitions lost, not committing: %s", sorted(lost))
        self._forget(lost)

    def _commit_failed(self) -> None:
        self.stats.commit_failures += 1

    def _forget(self, partitions: set[_PartitionKey]) -> None:
        self._assigned.difference_update(partitions)
        for key in partitions:
            self._done.pop(key, None)


# Causes a merged dirty key keeps besides its first.
_MAX_LATER = MAX_CAUSES - 1


class _Merged(msgspec.Struct, gc=False):
    """The triggers of one entity within one batch. A Struct: one is built per dirty key, where
    a dataclass's construction cost more than twice as much."""

    first: Cause
    later: list[Cause] = []
    triggers: int = 1

    def add(self, cause: Cause) -> None:
        """Count a trigger; keep its cause while there is room."""
        self.triggers += 1
        if len(self.later) < _MAX_LATER:
            self.later.append(cause)

    def dirty_key(self, resource: str, entity_id: EntityId, enqueued_ms: int) -> DirtyKey:
        return DirtyKey(
            resource, entity_id, self.first, enqueued_ms, self.triggers, tuple(self.later)
        )


def cause_of(
    message: Message, topic: str | None, partition: int | None, offset: int | None, change: Change
) -> Cause:
    """The trigger, with the producer's W3C trace context when it set one (spans.py): the only
    read of the message's headers, once per event that triggers anything."""
    return Cause(
        kind="cdc",
        table=change.table,
        op=change.op,
        topic=topic,
        partition=partition,
        offset=offset,
        source_ts_ms=change.source_ts_ms,
        lsn=change.lsn,
        appended_ms=_timestamp_ms(message),
        traceparent=traceparent_of(message.headers()),
    )


def _timestamp_ms(message: Message) -> int | None:
    kind, value = message.timestamp()
    return value if kind != TIMESTAMP_NOT_AVAILABLE and value > 0 else None


def _consume_error(message: Message) -> bool:
    """True for an error event in the batch; raise if it is fatal to the consumer."""
    error = message.error()
    if error is None:
        return False
    if error.fatal():
        raise KafkaException(error)
    log.warning("consumer error: %s", error.str())
    return True


def _first_offsets(batch: list[Message]) -> dict[_PartitionKey, int]:
    """The offset of each partition's first event in the batch, skipping error events: for
    rewinding a batch whose routing failed (``_route`` records them as it goes)."""
    first: dict[_PartitionKey, int] = {}
    for message in batch:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None or message.error() is not None:
            continue
        first.setdefault((topic, partition), offset)
    return first


class _Routed(NamedTuple):
    """A batch routed and not produced yet: its dirty keys, its dead letters, and the first
    and the next offset of each partition it covers."""

    pending: dict[DirtyEntity, _Merged]
    unusable: list[tuple[Message, Exception]]
    first: dict[_PartitionKey, int]
    next_offsets: dict[_PartitionKey, int]


class _Sent(NamedTuple):
    """A batch produced and not acknowledged yet: where to rewind to, and what to commit."""

    first: dict[_PartitionKey, int]
    next_offsets: dict[_PartitionKey, int]
