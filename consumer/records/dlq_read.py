"""The dead-letter topic, read back: what went there, chosen by filters, shown as a table or JSON.

This is the read-only half of ``reach-sync dlq`` (``list`` uses only this; ``replay`` reads with
it, then plans in ``records.dlq_replay``). It is kept apart from the replay because it never
writes anything and needs nothing but the broker: reading, decoding and showing can be changed
and tested without the replay's producer, and the replay depends on this module, never the
other way round.

Listing reads the topic from the beginning to its end without joining a consumer group or
committing anything (partitions are assigned with explicit offsets), so it never disturbs the
running service and it stops at the end instead of waiting for more. Each message is decoded
with ``records.deadletter``'s format; one that does not decode is listed as ``undecodable``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from consumer.config import KafkaSource, SyncDefinition
from consumer.errors import ConfigurationError, Retryable
from consumer.kafka import consumer_settings
from consumer.records.deadletter import (
    HEADER_ERROR_CLASS,
    HEADER_KIND,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_STAGE,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
    DeadLetterRecord,
)
from consumer.router.dirty import EntityId, decode_dirty

__all__ = [
    "KINDS",
    "DeadLetterRead",
    "Entry",
    "Filter",
    "Kind",
    "MissingTopic",
    "Position",
    "decode_entry",
    "end_offsets",
    "entry_json",
    "messages_to_end",
    "parse_time",
    "read_dead_letters",
    "reader_settings",
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
# A listing's reason column; the whole reason is in --json.
REASON_WIDTH = 72
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
    """``consumer.router.debezium.DecodeError`` matches itself, ``debezium.DecodeError`` and
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
    consumer = Consumer(reader_settings(kafka))
    try:
        ends = end_offsets(consumer, topic)
        matched, total = _read_to_end(consumer, topic, ends, chosen)
    finally:
        consumer.close()  # never joined a group: closing sends no LeaveGroup
    matched.sort(key=lambda e: (e.timestamp_ms or 0, e.at.partition, e.at.offset))
    selected = matched if chosen.limit is None else matched[max(0, len(matched) - chosen.limit) :]
    return DeadLetterRead(topic, selected, len(matched), total)


def reader_settings(kafka: KafkaSource) -> dict[str, Any]:
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


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
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


def messages_to_end(
    consumer: Consumer, topic: str, ends: dict[int, int], starts: dict[int, int] | None = None
) -> Iterator[Message]:
    """Every message of ``topic``'s partitions in ``ends``, from the beginning (or ``starts``)
    to each one's end-of-partition event at or past its start watermark; raise Retryable when
    nothing arrives for ``READ_IDLE_TIMEOUT_S`` before that.

    Stopping on that event, not on the watermark alone, matters on the local broker, whose
    watermark leaves out the rest of a partition's last record batch (docs/local-stack.md);
    the event comes after the whole batch was delivered. On Kafka both are exact. Shared by
    every reader of a topic to its end (dead letters here, audit records in audit_read).
    """
    first = starts or {}
    pending = {p for p, end in ends.items() if end > first.get(p, 0)}
    consumer.assign(
        [TopicPartition(topic, p, first.get(p, OFFSET_BEGINNING)) for p in sorted(pending)]
    )
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
            if not _error_event(message, ends, pending):
                yield message


def _read_to_end(
    consumer: Consumer, topic: str, ends: dict[int, int], chosen: Filter
) -> tuple[list[Entry], int]:
    """The dead letters ``chosen`` selects, and how many the topic holds."""
    matched: list[Entry] = []
    total = 0
    for message in messages_to_end(consumer, topic, ends):
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
