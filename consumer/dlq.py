"""The dead-letter topic, read back: list what went there, and replay it as dirty keys.

Listing reads the topic from the beginning to its end without joining a consumer group or
committing anything (partitions are assigned with explicit offsets), so it never disturbs the
running service and it stops at the end instead of waiting for more. Each message is decoded
with ``consumer.deadletter``'s format; one that does not decode is listed as ``undecodable``.

Replaying never re-sends what the dead letter holds. It makes the entities dirty again, through
the dirty topic and the same encoder and key as the router (``consumer.dirty``), so the syncer
recomputes them from the source database: a replay can never deliver a stale state. A ``record``
dead letter names its entity; an ``event`` is routed again with the current definition (it may
route now that the definition was fixed). Nothing is deleted from the dead-letter topic (it is
a log), and replaying twice is harmless: a recompute is idempotent and dedup skips what Reach
already has.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import msgspec
import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from consumer.config import KafkaSource, SyncDefinition
from consumer.deadletter import (
    HEADER_ERROR_CLASS,
    HEADER_KIND,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_STAGE,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
    DeadLetterRecord,
    error_class,
)
from consumer.debezium import DecodeError, Ignored, decode_event
from consumer.dirty import Cause, DirtyKey, EntityId, decode_dirty, dirty_message_key, encode_dirty
from consumer.errors import BadRecord, ConfigurationError, Retryable
from consumer.kafka import consumer_settings, producer_settings
from consumer.recompute import recompute_query
from consumer.triggers import TriggerIndex, plan_dirty

__all__ = [
    "KINDS",
    "DeadLetterRead",
    "Entry",
    "Filter",
    "KeyTypes",
    "MissingTopic",
    "Position",
    "ReplayFailure",
    "ReplayPlan",
    "decode_entry",
    "enqueue",
    "entry_json",
    "key_types_from_database",
    "parse_time",
    "plan_replay",
    "read_dead_letters",
    "table_lines",
]

Kind = Literal["record", "event", "undecodable"]
KINDS: tuple[Kind, ...] = ("record", "event", "undecodable")

# Metadata and watermarks are single round trips; a broker slower than this is unavailable.
BROKER_TIMEOUT_S = 30.0
# Reading stops with an error when no message and no end-of-partition arrives for this long.
READ_IDLE_TIMEOUT_S = 30.0
READ_BATCH = 500
POLL_TIMEOUT_S = 0.5
# The replay's produce: every outcome is reported within message.timeout.ms.
DELIVERY_TIMEOUT_MS = 30_000
ACK_TIMEOUT_S = DELIVERY_TIMEOUT_MS / 1000 + 5
QUEUE_FULL_POLL_S = 0.1
# A listing's reason column; the whole reason is in --json.
REASON_WIDTH = 72
# Debezium sends these Postgres types as JSON integers, every other key type as a string.
_INTEGER_TYPES = frozenset({"int2", "int4", "int8"})
_INTEGER = re.compile(r"-?[0-9]+")
_HEADER_PREFIX = "reach-sync-dlq-"
_record_decoder = msgspec.json.Decoder(DeadLetterRecord)


class MissingTopic(ConfigurationError):
    """The dead-letter topic does not exist: a wrong name, or nothing ever ran with it."""

    def __init__(self, topic: str) -> None:
        super().__init__(
            f"the dead-letter topic {topic} does not exist (check topics.dead_letter; reach-sync "
            "run creates it)",
            scope="topics.dead_letter",
        )
        self.topic = topic


# --- what a dead letter says -------------------------------------------------------------------


class Position(NamedTuple):
    """Where a message is: ``topic[partition]@offset``."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One dead letter as read back; ``timestamp_ms`` is when it was dead-lettered.

    ``resource`` and ``entity_id`` are known for a record, and for an event the syncer rejected
    whose value still reads as a dirty key; a source event names no entity until it is routed.
    ``key`` and ``value`` are an event's original bytes, kept for the replay and never printed
    (a source event is a whole row, PII included).
    """

    at: Position
    timestamp_ms: int | None
    kind: Kind
    reason: str
    error_class: str | None = None
    stage: str | None = None
    resource: str | None = None
    entity_id: EntityId | None = None
    tenant: str | None = None
    source: Position | None = None
    source_timestamp_ms: int | None = None
    record: DeadLetterRecord | None = None
    key: bytes | None = None
    value: bytes | None = None

    @property
    def entity(self) -> str | None:
        return None if self.resource is None else f"{self.resource}/{self.entity_id}"


def decode_entry(message: Message) -> Entry:
    """Read one dead-letter message; anything that is not one becomes an ``undecodable`` entry."""
    headers = _our_headers(message)
    at = Position(message.topic() or "", message.partition() or 0, message.offset() or 0)
    _, timestamp = message.timestamp()
    when = None if timestamp < 0 else timestamp
    kind = headers.get(HEADER_KIND)
    if kind == "record":
        return _record_entry(message, at, when)
    if kind == "event":
        return _event_entry(message, headers, at, when)
    reason = "no reach-sync-dlq-kind header" if kind is None else f"unknown kind {kind!r}"
    return Entry(at, when, "undecodable", f"not a dead letter: {reason}")


def _record_entry(message: Message, at: Position, when: int | None) -> Entry:
    try:
        record = _record_decoder.decode(message.value() or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Entry(at, when, "undecodable", f"a record dead letter that does not decode: {exc}")
    return Entry(
        at,
        when,
        "record",
        record.reason,
        error_class=record.error_class,
        stage=record.stage,
        resource=record.resource,
        entity_id=record.id,
        tenant=record.tenant,
        record=record,
    )


def _event_entry(
    message: Message, headers: dict[str, str], at: Position, when: int | None
) -> Entry:
    stage = headers.get(HEADER_STAGE)
    resource: str | None = None
    entity_id: EntityId | None = None
    if stage == "syncer":  # a dirty-topic message: it names its entity if it still decodes
        try:
            dirty = decode_dirty(message.value() or b"")
            resource, entity_id = dirty.resource, dirty.id
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    return Entry(
        at,
        when,
        "event",
        headers.get(HEADER_REASON, ""),
        error_class=headers.get(HEADER_ERROR_CLASS),
        stage=stage,
        resource=resource,
        entity_id=entity_id,
        source=_source_position(headers),
        source_timestamp_ms=_int(headers.get(HEADER_TIMESTAMP)),
        key=message.key(),
        value=message.value(),
    )


def _our_headers(message: Message) -> dict[str, str]:
    """reach-sync's headers as text; the last of each wins, because an event keeps its original
    headers first and ours come after them."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    ours: dict[str, str] = {}
    for name, value in pairs:
        if name.startswith(_HEADER_PREFIX):
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            ours[name] = text or ""
    return ours


def _source_position(headers: dict[str, str]) -> Position | None:
    topic = headers.get(HEADER_TOPIC)
    partition, offset = _int(headers.get(HEADER_PARTITION)), _int(headers.get(HEADER_OFFSET))
    if topic is None or partition is None or offset is None:
        return None
    return Position(topic, partition, offset)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and _INTEGER.fullmatch(text) else None


# --- choosing dead letters ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters a command is about; every field that is set must hold.

    ``resource``, ``entity_id`` and ``tenant`` can only match entries that name them. Times are
    when the message was dead-lettered: ``since`` inclusive, ``until`` exclusive. ``limit`` keeps
    the most recent matches.
    """

    resource: str | None = None
    entity_id: str | None = None
    tenant: str | None = None
    kind: Kind | None = None
    error_class: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    def active(self) -> bool:
        return bool(self.describe())

    def matches(self, entry: Entry) -> bool:
        when = entry.timestamp_ms
        return all(
            (
                self.kind is None or entry.kind == self.kind,
                self.resource is None or entry.resource == self.resource,
                self.entity_id is None
                or (entry.entity_id is not None and str(entry.entity_id) == self.entity_id),
                self.tenant is None or entry.tenant == self.tenant,
                self.error_class is None or _class_matches(entry.error_class, self.error_class),
                self.since_ms is None or (when is not None and when >= self.since_ms),
                self.until_ms is None or (when is not None and when < self.until_ms),
            )
        )

    def describe(self) -> str:
        """The filter as the command-line options that make it, for messages."""
        options = [
            ("--resource", self.resource),
            ("--id", self.entity_id),
            ("--tenant", self.tenant),
            ("--kind", self.kind),
            ("--error-class", self.error_class),
            ("--since", None if self.since_ms is None else _iso(self.since_ms)),
            ("--until", None if self.until_ms is None else _iso(self.until_ms)),
        ]
        return " ".join(f"{flag} {value}" for flag, value in options if value is not None)


def _class_matches(actual: str | None, wanted: str) -> bool:
    """``consumer.debezium.DecodeError`` matches itself, ``debezium.DecodeError`` and
    ``DecodeError``: people type the short name."""
    return actual is not None and (actual == wanted or actual.endswith(f".{wanted}"))


def parse_time(text: str) -> int:
    """ISO-8601 (a date, or a date and time; no zone means UTC) in milliseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO-8601 time (e.g. 2026-11-23T17:00:00Z or 2026-11-23)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# --- reading the topic -------------------------------------------------------------------------


@dataclass
class DeadLetterRead:
    """The selected entries, oldest first; how many matched before ``limit``; how many dead
    letters the topic holds."""

    topic: str
    entries: list[Entry]
    matched: int
    total: int


def read_dead_letters(definition: SyncDefinition, chosen: Filter) -> DeadLetterRead:
    """Read the dead-letter topic from the beginning to its end and keep what ``chosen`` matches.

    Raises MissingTopic when the topic does not exist (it is never created by reading), and
    Retryable when the broker does not answer.
    """
    kafka, topic = definition.source.kafka, definition.topics.dead_letter
    consumer = Consumer(_reader_settings(kafka))
    try:
        ends = _end_offsets(consumer, topic)
        matched, total = _read_to_end(consumer, topic, ends, chosen)
    finally:
        consumer.close()  # never joined a group: closing sends no LeaveGroup
    matched.sort(key=lambda e: (e.timestamp_ms or 0, e.at.partition, e.at.offset))
    selected = matched if chosen.limit is None else matched[max(0, len(matched) - chosen.limit) :]
    return DeadLetterRead(topic, selected, len(matched), total)


def _reader_settings(kafka: KafkaSource) -> dict[str, Any]:
    """A consumer that is only ever assigned partitions: its group id is required by librdkafka,
    but it never joins the group and never commits."""
    return consumer_settings(
        kafka,
        f"{kafka.group_id}.dlq-reader",
        **{
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
            # The local broker holds an empty fetch for the whole wait, and the end of a
            # partition is only known from one; the listing waits less for it this way.
            "fetch.wait.max.ms": 100,
        },
    )


def _end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    """The high watermark of each partition now; raise MissingTopic if there is no such topic.

    All topics are listed rather than this one by name: the local broker creates a topic that a
    metadata request names, and listing must never create the topic it reports missing.
    """
    try:
        metadata = consumer.list_topics(timeout=BROKER_TIMEOUT_S)
        found = metadata.topics.get(topic)
        if found is None:
            raise MissingTopic(topic)
        return {
            p: consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=BROKER_TIMEOUT_S, cached=False
            )[1]
            for p in sorted(found.partitions)
        }
    except KafkaException as exc:
        error = exc.args[0]
        reason = error.str() if isinstance(error, KafkaError) else str(error)
        raise Retryable(f"reading {topic}: the broker did not answer: {reason}") from exc


def _read_to_end(
    consumer: Consumer, topic: str, ends: dict[int, int], chosen: Filter
) -> tuple[list[Entry], int]:
    """Consume each partition until its end-of-partition event at or past its start watermark.

    Stopping on that event, not on the watermark alone, matters on the local broker, whose
    watermark leaves out the rest of a partition's last record batch (local-broker-notes.md);
    the event comes after the whole batch was delivered. On Kafka both are exact.
    """
    pending = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
    matched: list[Entry] = []
    total = 0
    last_progress = time.monotonic()
    while pending:
        batch = consumer.consume(READ_BATCH, POLL_TIMEOUT_S)
        if batch:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > READ_IDLE_TIMEOUT_S:
            raise Retryable(
                f"reading {topic}: nothing arrived for {READ_IDLE_TIMEOUT_S:.0f} s before the "
                f"end of partitions {sorted(pending)}"
            )
        for message in batch:
            if _error_event(message, ends, pending):
                continue
            total += 1
            entry = decode_entry(message)
            if chosen.matches(entry):
                matched.append(entry)
    return matched, total


def _error_event(message: Message, ends: dict[int, int], pending: set[int]) -> bool:
    """True for an error event (an end of partition marks it done); raise on a real error."""
    error = message.error()
    if error is None:
        return False
    partition = message.partition() or 0
    if error.code() == KafkaError._PARTITION_EOF:
        if (message.offset() or 0) >= ends.get(partition, 0):
            pending.discard(partition)
        return True
    if error.fatal() or error.code() in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    ):
        raise Retryable(f"reading {message.topic()}: {error.str()}")
    return True  # transient (a connection reset): librdkafka retries on its own


# --- showing dead letters ----------------------------------------------------------------------


def table_lines(entries: Iterable[Entry]) -> list[str]:
    """A readable table, one dead letter a line, in the order given; the reason is cut short."""
    rows = [("DEAD-LETTERED (UTC)", "AT", "KIND", "ENTITY / SOURCE", "TENANT", "ERROR", "REASON")]
    rows += [_row(entry) for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def _row(entry: Entry) -> tuple[str, str, str, str, str, str, str]:
    when = "-" if entry.timestamp_ms is None else _iso(entry.timestamp_ms)[:19].replace("T", " ")
    what = entry.entity or (f"from {entry.source}" if entry.source else "-")
    error = (entry.error_class or "-").rsplit(".", 1)[-1]
    if entry.record is not None and entry.record.http_status is not None:
        error += f" {entry.record.http_status}"
    reason = " ".join(entry.reason.split())
    if len(reason) > REASON_WIDTH:
        reason = reason[: REASON_WIDTH - 1] + "…"
    at = f"{entry.at.partition}:{entry.at.offset}"
    return (when, at, entry.kind, what, entry.tenant or "-", error, reason)


def entry_json(entry: Entry) -> dict[str, Any]:
    """One dead letter as a JSON object: a record's whole value (it already follows the PII
    policy), and for an event where it came from and how big it was, never its bytes."""
    out: dict[str, Any] = {
        "topic": entry.at.topic,
        "partition": entry.at.partition,
        "offset": entry.at.offset,
        "timestamp": None if entry.timestamp_ms is None else _iso(entry.timestamp_ms),
        "kind": entry.kind,
        "stage": entry.stage,
        "error_class": entry.error_class,
        "reason": entry.reason,
        "resource": entry.resource,
        "id": entry.entity_id,
        "tenant": entry.tenant,
    }
    if entry.record is not None:
        out["record"] = msgspec.to_builtins(entry.record)
    if entry.kind == "event":
        source = None if entry.source is None else entry.source._asdict()
        if source is not None and entry.source_timestamp_ms is not None:
            source["timestamp"] = _iso(entry.source_timestamp_ms)
        out["source"] = source
        out["key_bytes"] = None if entry.key is None else len(entry.key)
        out["value_bytes"] = None if entry.value is None else len(entry.value)
    return out


# --- replaying ---------------------------------------------------------------------------------


class ReplayFailure(Exception):
    """A dead letter that still cannot become a dirty key; reported, not dead-lettered again."""


class _Target(NamedTuple):
    resource: str
    id: EntityId
    table: str | None
    op: str | None


@dataclass
class ReplayPlan:
    """The dirty keys a replay produces (one per entity) and the dead letters that still fail."""

    keys: dict[tuple[str, str], DirtyKey] = field(default_factory=dict)
    failures: list[tuple[Entry, str]] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    replayed: int = 0

    def per_resource(self) -> Counter[str]:
        return Counter(key.resource for key in self.keys.values())


# Whether a resource's key column is an integer (the id is then an int, as Debezium sends it).
KeyTypes = Callable[[str], bool]


def plan_replay(
    entries: Iterable[Entry], definition: SyncDefinition, key_is_integer: KeyTypes, now_ms: int
) -> ReplayPlan:
    """Turn dead letters into dirty keys, oldest first; an entity's first dead letter is its
    cause. Nothing is produced here, so a failure part-way leaves nothing half done."""
    index = TriggerIndex.from_definition(definition)
    plan = ReplayPlan()
    for entry in entries:
        try:
            targets = _targets(entry, definition, index, key_is_integer)
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
    entry: Entry, definition: SyncDefinition, index: TriggerIndex, key_is_integer: KeyTypes
) -> list[_Target] | Ignored:
    if entry.kind == "record" and entry.record is not None:
        record = entry.record
        _known_resource(definition, record.resource)
        entity_id = _typed_id(record.id, key_is_integer(record.resource), record.resource)
        return [_Target(record.resource, entity_id, record.cause.table, record.cause.op)]
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


def _typed_id(entity_id: EntityId, integer_key: bool, resource: str) -> EntityId:
    """The id typed as the router would have it: a record keeps its id as text, but a window
    that mixes ``7`` and ``"8"`` for one resource cannot be queried (psycopg refuses mixed
    lists), so an integer key must stay an int and any other key a string."""
    if not integer_key:
        return str(entity_id)
    if isinstance(entity_id, int) or _INTEGER.fullmatch(entity_id):
        return int(entity_id)
    raise ReplayFailure(f"id {entity_id!r} is not an integer, but the key of {resource} is")


def key_types_from_database(definition: SyncDefinition) -> KeyTypes:
    """Ask the source database, once per resource, whether its key column is an integer.

    The resource's own query runs with no ids (no rows, read-only, bounded time) and the key
    column's type is read from the result's description. Raises Retryable when the database is
    unavailable, ConfigurationError when the query fails or has no key column.
    """
    known: dict[str, bool] = {}

    def key_is_integer(resource: str) -> bool:
        if resource not in known:
            known[resource] = _key_is_integer(definition, resource)
        return known[resource]

    return key_is_integer


def _key_is_integer(definition: SyncDefinition, name: str) -> bool:
    database, resource = definition.source.database, definition.resources[name]
    options = (
        f"-c statement_timeout={database.statement_timeout_ms} -c default_transaction_read_only=on"
    )
    try:
        with psycopg.connect(
            database.dsn.get_secret_value(), connect_timeout=10, autocommit=True, options=options
        ) as conn:
            cursor = conn.execute(recompute_query(resource), {"ids": []})
            types = {c.name: conn.adapters.types.get(c.type_code) for c in cursor.description or []}
    except psycopg.OperationalError as exc:
        raise Retryable(
            f"source database unavailable (asked for the key type of {name}): {type(exc).__name__}"
        ) from exc
    except psycopg.Error as exc:
        raise ConfigurationError(f"the query of {name} fails: {exc}", scope="definition") from exc
    if resource.key not in types:
        raise ConfigurationError(f"the query of {name} returns no column {resource.key!r}")
    found = types[resource.key]
    return found is not None and found.name in _INTEGER_TYPES


def enqueue(keys: Iterable[DirtyKey], definition: SyncDefinition) -> int:
    """Produce dirty keys keyed ``resource/id`` and return how many once the broker acknowledged
    every one; raise Retryable if any was not (running the replay again is harmless)."""
    topic = definition.topics.dirty
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

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
    left = producer.flush(ACK_TIMEOUT_S)
    if left or failures:
        first = failures[0].str() if failures else "no answer in time"
        raise Retryable(
            f"{left + len(failures)} of {produced} dirty keys were not acknowledged by {topic} "
            f"({first}); replaying again is harmless"
        )
    return produced
