"""The audit topic, read back: one entity's history, newest first (``reach-sync audit why``).

Reading works like ``dlq list`` and reuses its reader (``records.dlq_read``): partitions are
assigned with explicit offsets, no consumer group is joined, nothing is committed, and reading
stops at the end of each partition (with the local broker's quirks handled there). Only the
partition the entity's key hashes to is read (``records.audit.audit_partition``, librdkafka's
partitioner that the writer pins), unless ``all_partitions`` asks for every one: after the
topic's partition count was raised, an entity's older records are in its former partition.

A send is shown once: the write-ahead ``sending`` record of a request and the outcome record
that followed it (same tenant, schema, kind and payload hash) are one entry, the outcome with
when it was announced (``fold_sends``); a ``sending`` record that no outcome followed is its own
entry: the request left and its outcome is unknown (the process ended before the answer, or
Reach did not take it: refused records are on the dead-letter topic).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import orjson
from confluent_kafka import Consumer

from consumer.config import SyncDefinition
from consumer.errors import ConfigurationError
from consumer.records.audit import (
    SENDING,
    AuditRecord,
    audit_key,
    audit_partition,
    decode_audit,
)
from consumer.records.dlq_read import (
    MissingTopic,
    Position,
    end_offsets,
    messages_to_end,
    reader_settings,
)
from consumer.router.dirty import Cause

__all__ = [
    "AuditEntry",
    "History",
    "MissingAuditTopic",
    "Query",
    "entry_json",
    "fold_sends",
    "history_lines",
    "read_history",
]

# The hash as shown in a listing; --json has all of it.
SHORT_HASH = 12


class MissingAuditTopic(ConfigurationError):
    """The audit topic does not exist: a wrong name, or nothing was ever audited with it."""

    def __init__(self, topic: str) -> None:
        super().__init__(
            f"the audit topic {topic} does not exist (check topics.audit; reach-sync run "
            "creates it)",
            scope="topics.audit",
        )
        self.topic = topic


@dataclass(frozen=True, slots=True)
class Query:
    """One entity's history; ``tenant`` and ``since_ms`` (inclusive, on ``at_ms``) narrow it,
    ``limit`` keeps the most recent."""

    resource: str
    entity_id: str
    tenant: str | None = None
    since_ms: int | None = None
    limit: int | None = None
    all_partitions: bool = False

    @property
    def key(self) -> bytes:
        return audit_key(self.resource, self.entity_id)

    def matches(self, record: AuditRecord) -> bool:
        return self.concerns(record) and (self.since_ms is None or record.at_ms >= self.since_ms)

    def concerns(self, record: AuditRecord) -> bool:
        """The entity's (and tenant's) record, whenever it was written."""
        return (
            record.resource == self.resource
            and record.id == self.entity_id
            and (self.tenant is None or record.tenant == self.tenant)
        )

    def describe(self) -> str:
        """The entity and the narrowing options, for messages."""
        options = [
            ("--tenant", self.tenant),
            ("--since", None if self.since_ms is None else _iso(self.since_ms, "T")),
        ]
        narrowing = " ".join(f"{flag} {value}" for flag, value in options if value is not None)
        entity = f"{self.resource}/{self.entity_id}"
        return f"{entity} with {narrowing}" if narrowing else entity


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One send: its record and where it is on the topic. ``announced_ms``: when its ``sending``
    record was written, before the request left (for a ``sending`` record no outcome followed,
    its own time; None: no ``sending`` record precedes it, as before reach-sync wrote them)."""

    at: Position
    record: AuditRecord
    announced_ms: int | None = None

    @property
    def outcome_unknown(self) -> bool:
        """The request left and no outcome record followed."""
        return self.record.outcome == SENDING


@dataclass
class History:
    """The selected records, newest first; how many matched before ``limit``; what was read."""

    topic: str
    partitions: list[int]
    partition_count: int
    entries: list[AuditEntry] = field(default_factory=list)
    matched: int = 0
    # Messages read from the partitions, and those of this entity that did not decode.
    scanned: int = 0
    undecodable: int = 0

    def where(self) -> str:
        """Which partitions were read, for messages."""
        if len(self.partitions) == 1:
            return f"partition {self.partitions[0]} of {self.partition_count}"
        return f"all {self.partition_count} partitions"


def read_history(definition: SyncDefinition, query: Query) -> History:
    """Read the entity's partition (or all) of the audit topic to its end; keep what matches.

    Raises MissingAuditTopic when the topic does not exist (reading never creates it), and
    Retryable when the broker does not answer.
    """
    topic = definition.topics.audit
    consumer = Consumer(reader_settings(definition.source.kafka))
    try:
        try:
            ends = end_offsets(consumer, topic)
        except MissingTopic as exc:
            raise MissingAuditTopic(topic) from exc
        chosen = sorted(ends) if query.all_partitions else [audit_partition(query.key, len(ends))]
        history = History(topic, chosen, len(ends))
        _read(consumer, topic, {p: ends[p] for p in chosen}, query, history)
    finally:
        consumer.close()  # never joined a group: closing sends no LeaveGroup
    # Folded before --since: a send announced before it and answered after is still one.
    history.entries = [e for e in fold_sends(history.entries) if query.matches(e.record)]
    history.matched = len(history.entries)
    if query.limit is not None:
        del history.entries[query.limit :]
    return history


def _read(
    consumer: Consumer, topic: str, ends: dict[int, int], query: Query, history: History
) -> None:
    """Keep the entity's records among the partitions' messages, each once."""
    seen: set[bytes] = set()  # a record produced twice (a retried flush) is shown once
    for message in messages_to_end(consumer, topic, ends):
        history.scanned += 1
        value = message.value() or b""
        if message.key() != query.key or value in seen:
            continue
        seen.add(value)
        try:
            record = decode_audit(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            history.undecodable += 1
            continue
        if query.concerns(record):
            at = Position(topic, message.partition() or 0, message.offset() or 0)
            history.entries.append(AuditEntry(at, record))


def _order(entry: AuditEntry) -> tuple[int, int, int]:
    return (entry.record.at_ms, entry.at.partition, entry.at.offset)


def fold_sends(entries: list[AuditEntry]) -> list[AuditEntry]:
    """One entry per send, newest first (module docstring). An outcome record takes the latest
    ``sending`` record before it with the same tenant, schema, kind and payload hash: an
    earlier one of those was a request whose process ended before its answer, and the send
    that was answered is the one announced last (an entity has one request in flight at once).
    Records are put in order by ``at_ms`` (then position): a record produced again by a retried
    flush lands after later ones, but keeps its time."""
    waiting: dict[tuple[str, str, str, str | None], list[AuditEntry]] = {}
    folded: list[AuditEntry] = []
    for entry in sorted(entries, key=_order):
        r = entry.record
        key = (r.tenant, r.reach_schema, r.kind, r.payload_sha256)
        if r.outcome == SENDING:
            waiting.setdefault(key, []).append(entry)
            continue
        announced = waiting.get(key)
        if announced:
            entry = replace(entry, announced_ms=announced.pop().record.at_ms)
        folded.append(entry)
    for left in waiting.values():
        folded += [replace(e, announced_ms=e.record.at_ms) for e in left]
    folded.sort(key=_order, reverse=True)
    return folded


# --- showing a history ---------------------------------------------------------------------------


# Said of a send whose outcome no record gives.
OUTCOME_UNKNOWN = (
    "left, outcome unknown (the process ended before the answer, or Reach did not take it;"
    " a record Reach refused is on the dead-letter topic)"
)


def history_lines(entries: list[AuditEntry]) -> list[str]:
    """Each send: a heading line (time, kind, outcome, hash, tenant, and ``realtime`` or
    ``batch <id>``), then when it was announced (or that its outcome is unknown), its fields and
    its causes, indented."""
    lines: list[str] = []
    for entry in entries:
        r = entry.record
        digest = "-" if r.payload_sha256 is None else r.payload_sha256[:SHORT_HASH]
        how = r.mode if r.batch_id is None else f"{r.mode} {r.batch_id}"
        lines.append(
            f"{_iso(r.at_ms)}  {r.kind:<6}  {r.outcome:<8}  hash {digest:<{SHORT_HASH}}  "
            f"tenant {r.tenant}  {how}"
        )
        if entry.outcome_unknown:
            lines.append(f"    {OUTCOME_UNKNOWN}")
        elif entry.announced_ms is not None:
            lines.append(f"    announced: {_iso(entry.announced_ms)}, before the request left")
        if r.fields:
            lines.append(f"    fields: {', '.join(r.fields)}")
        for cause in r.causes:
            lines.append(f"    cause:  {describe_cause(cause)}")
        if not r.causes:
            lines.append("    cause:  (none recorded)")
    return lines


def describe_cause(cause: Cause) -> str:
    """``cdc public.customers u @ shop.public.customers[0]/12, lsn 42, source ts ...``."""
    text = " ".join(part for part in (cause.kind, cause.table, cause.op) if part)
    if cause.topic is not None:
        where = cause.topic
        if cause.partition is not None:
            where += f"[{cause.partition}]"
        if cause.offset is not None:
            where += f"/{cause.offset}"
        text += f" @ {where}"
    if cause.lsn is not None:
        text += f", lsn {cause.lsn}"
    if cause.source_ts_ms is not None:
        text += f", source ts {_iso(cause.source_ts_ms)}"
    if cause.run is not None:  # a backfill's or resync's run, as `reach-sync backfill` prints it
        text += f", run {cause.run}"
    return text


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """One send as JSON: its record (the outcome's, or the ``sending`` record's when no outcome
    followed), with where it is on the topic; ``at`` is ``at_ms`` as text; ``announced_at_ms``
    when its ``sending`` record was written (null: none precedes it)."""
    out: dict[str, Any] = {
        "topic": entry.at.topic,
        "partition": entry.at.partition,
        "offset": entry.at.offset,
        "at": _iso(entry.record.at_ms, "T"),
    }
    out.update(msgspec.to_builtins(entry.record))
    out["values"] = {name: _as_json(value) for name, value in entry.record.values.items()}
    out["announced_at_ms"] = entry.announced_ms
    return out


def _as_json(value: Any) -> Any:
    """A value as the audit record holds it, for orjson: its exact numbers as their digits (the
    decoder reads them as Decimals, and integers of any size)."""
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f"))
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value))
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    return value


def _iso(ms: int, sep: str = " ") -> str:
    """UTC, to the millisecond: ``2026-11-23 17:00:01.123Z``."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(sep=sep, timespec="milliseconds").replace("+00:00", "Z")
