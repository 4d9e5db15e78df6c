"""The audit topic: a durable record of every record Reach accepted and every entity it deleted,
and, written ahead, of every record and delete about to leave for Reach (outcome ``sending``).

What may be in a record is decided here, from the definition alone (``audited_fields``): never a
``pii: send`` or ``pii: hash`` value, nor an unmapped column. A record skipped as unchanged was
not sent and is not audited. Records are keyed ``resource/id`` with librdkafka's default
partitioner pinned, so ``audit why`` reads only the entity's partition (``audit_partition``).

The syncer calls ``AuditWriter.announce``, then ``flush``, before each request leaves (the
request is not made unless the broker acknowledged the ``sending`` records: a process that dies
after it left still leaves a record of what Reach may apply); and ``AuditWriter.record`` as
delivery reports each request's outcome, then ``flush``, before the sends are remembered in the
last-sent store and offsets committed; ``flush`` raises Retryable until the broker acknowledged
every record. The long story: docs/design.md, "Audit".
"""

from __future__ import annotations

import functools
import threading
import zlib
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.config import Resource, SyncDefinition
from consumer.errors import Retryable
from consumer.kafka import producer_settings
from consumer.router.dirty import MAX_CAUSES, Cause, dirty_message_key
from consumer.router.topics import ADMIN_TIMEOUT_S, BROKER_DEFAULT_REPLICATION, _created_or_exists
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.projection import Projected, msgspec_hook

__all__ = [
    "AUDIT_VERSION",
    "HEADER_KIND",
    "HEADER_VERSION",
    "PARTITIONER",
    "SENDING",
    "AuditRecord",
    "AuditWriter",
    "announced_records",
    "audit_key",
    "audit_message",
    "audit_partition",
    "audit_records",
    "audited_fields",
    "decode_audit",
    "delete_record",
    "deleting_record",
    "destination_host",
    "encode_audit",
    "ensure_audit_topic",
    "sending_record",
    "upsert_record",
]

AUDIT_VERSION = 1
HEADER_VERSION = "reach-sync-audit-version"
HEADER_KIND = "reach-sync-audit-kind"
# librdkafka's default, pinned: audit_partition computes the same partition for a key.
PARTITIONER = "consistent_random"
# The audit is a record to keep: created without time-based deletion (operators set the
# retention their audit policy wants on the topic; an existing topic is never changed).
TOPIC_CONFIG = {"retention.ms": "-1"}
# How long flush waits for the broker by default (the syncer's dead letters wait as long).
FLUSH_TIMEOUT_S = 30.0

Kind = Literal["upsert", "delete"]
Mode = Literal["realtime", "batch"]
# unconfirmed: the request left and its answer was lost (5xx, timeout): Reach may have applied it.
# sending: written ahead, before the request left (no answer yet): Reach may apply it from then
# on; the request's outcome record follows unless the process ended first.
Outcome = Literal["accepted", "parked", "deleted", "unconfirmed", "sending"]
SENDING: Outcome = "sending"


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One audited send or delete; every field is always encoded (nulls explicit)."""

    version: int = AUDIT_VERSION
    kind: Kind
    tenant: str
    resource: str
    reach_schema: str
    id: str
    destination: str
    at_ms: int
    payload_sha256: str | None
    fields: tuple[str, ...]
    values: dict[str, Any]
    causes: tuple[Cause, ...]
    mode: Mode
    batch_id: str | None
    outcome: Outcome


# Values hold what projection.py sends: an exact number is a Fragment, written as its digits and
# read back as a Decimal (a float would round it).
_encoder = msgspec.json.Encoder(enc_hook=msgspec_hook)
_decoder = msgspec.json.Decoder(AuditRecord, float_hook=Decimal)


def encode_audit(record: AuditRecord) -> bytes:
    return _encoder.encode(record)


def decode_audit(raw: bytes) -> AuditRecord:
    """Raise msgspec.DecodeError/ValidationError on anything that is not an audit record."""
    return _decoder.decode(raw)


def audit_key(resource: str, entity_id: str) -> bytes:
    """The Kafka key, ``resource/id``: the same as the entity's dirty keys."""
    return dirty_message_key(resource, entity_id)


def audit_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's ``consistent_random`` partitioner gives a non-empty key."""
    return zlib.crc32(key) % partitions


# --- what a record may hold ----------------------------------------------------------------------


def destination_host(base_url: str) -> str:
    """``host`` or ``host:port`` of the base URL: never its credentials, path or query."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return host if parts.port is None else f"{host}:{parts.port}"


class AuditedFields(NamedTuple):
    """Which field names a resource's audit records may name, and whose values they may hold."""

    names: frozenset[str]
    values: frozenset[str]


def audited_fields(resource: Resource) -> AuditedFields:
    """The rule of the module docstring, from the definition alone."""
    groups = frozenset() if resource.groups is None else frozenset({resource.groups.field})
    names = frozenset(resource.mapping) | groups
    if not resource.audit_values:
        return AuditedFields(names, frozenset())
    plain = frozenset(name for name, field in resource.mapping.items() if field.pii == "none")
    return AuditedFields(names, plain | groups)


def upsert_record(name: str, resource: Resource, destination: str, accepted: Sent) -> AuditRecord:
    """The audit record of one accepted (or parked) record of resource ``name``."""
    return _upsert(name, resource, destination, accepted, audited_fields(resource))


@functools.lru_cache(maxsize=256)
def _audited(allowed: AuditedFields, keys: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """For a record with these keys: the field names to audit, and the names whose values to
    audit, both sorted. Every record of a resource has the same keys: worked out once."""
    ordered = sorted(keys)
    return tuple(k for k in ordered if k in allowed.names), [
        k for k in ordered if k in allowed.values
    ]


def _upsert(
    name: str, resource: Resource, destination: str, accepted: Sent, allowed: AuditedFields
) -> AuditRecord:
    batch_id = accepted.batch_id
    return _payload_record(
        name,
        resource,
        destination,
        allowed,
        accepted.projected,
        accepted.at_ms,
        accepted.causes,
        "batch" if batch_id is not None or accepted.in_batch else "realtime",
        batch_id,
        _upsert_outcome(accepted),
    )


def _sending(
    name: str, resource: Resource, destination: str, leaving: Sending, allowed: AuditedFields
) -> AuditRecord:
    return _payload_record(
        name,
        resource,
        destination,
        allowed,
        leaving.projected,
        leaving.at_ms,
        leaving.causes,
        "batch" if leaving.in_batch else "realtime",
        None,
        SENDING,
    )


def _payload_record(
    name: str,
    resource: Resource,
    destination: str,
    allowed: AuditedFields,
    projected: Projected,
    at_ms: int,
    causes: Sequence[Cause],
    mode: Mode,
    batch_id: str | None,
    outcome: Outcome,
) -> AuditRecord:
    """An upsert's record: what the record sent holds (``audited_fields``), and how it went."""
    record = projected.record
    fields, valued = _audited(allowed, tuple(record))
    return AuditRecord(
        kind="upsert",
        tenant=projected.tenant,
        resource=name,
        reach_schema=resource.reach_schema,
        id=projected.external_id,
        destination=destination,
        at_ms=at_ms,
        payload_sha256=projected.hash,
        fields=fields,
        values={k: record[k] for k in valued},
        causes=tuple(causes[:MAX_CAUSES]),
        mode=mode,
        batch_id=batch_id,
        outcome=outcome,
    )


def _upsert_outcome(accepted: Sent) -> Outcome:
    if accepted.unconfirmed:
        return "unconfirmed"
    return "parked" if accepted.parked else "accepted"


def delete_record(name: str, resource: Resource, destination: str, deleted: Removed) -> AuditRecord:
    """The audit record of one entity of resource ``name`` deleted from a tenant."""
    outcome: Outcome = "unconfirmed" if deleted.unconfirmed else "deleted"
    return _delete(name, resource, destination, deleted, deleted.batch_id, outcome)


def sending_record(
    name: str, resource: Resource, destination: str, leaving: Sending
) -> AuditRecord:
    """The write-ahead record of one record of resource ``name`` about to leave for Reach."""
    return _sending(name, resource, destination, leaving, audited_fields(resource))


def deleting_record(
    name: str, resource: Resource, destination: str, leaving: Deleting
) -> AuditRecord:
    """The write-ahead record of one entity of resource ``name`` about to be deleted."""
    return _delete(name, resource, destination, leaving, None, SENDING)


def _delete(
    name: str,
    resource: Resource,
    destination: str,
    entity: Removed | Deleting,
    batch_id: str | None,
    outcome: Outcome,
) -> AuditRecord:
    return AuditRecord(
        kind="delete",
        tenant=entity.tenant,
        resource=name,
        reach_schema=resource.reach_schema,
        id=entity.external_id,
        destination=destination,
        at_ms=entity.at_ms,
        payload_sha256=None,
        fields=(),
        values={},
        causes=tuple(entity.causes[:MAX_CAUSES]),
        mode="batch",
        batch_id=batch_id,
        outcome=outcome,
    )


def announced_records(
    name: str,
    resource: Resource,
    destination: str,
    sending: Iterable[Sending] = (),
    deleting: Iterable[Deleting] = (),
) -> list[AuditRecord]:
    """The write-ahead (``sending``) records of one request of a resource: upserts, then
    deletes."""
    allowed = audited_fields(resource)
    return [
        *(_sending(name, resource, destination, s, allowed) for s in sending),
        *(deleting_record(name, resource, destination, d) for d in deleting),
    ]


def audit_records(
    name: str,
    resource: Resource,
    destination: str,
    accepted: Iterable[Sent] = (),
    deleted: Iterable[Removed] = (),
) -> list[AuditRecord]:
    """The audit records of one resource's delivery: upserts, then deletes."""
    allowed = audited_fields(resource)
    return [
        *(_upsert(name, resource, destination, a, allowed) for a in accepted),
        *(delete_record(name, resource, destination, d) for d in deleted),
    ]


# --- writing -------------------------------------------------------------------------------------

Headers = list[tuple[str, str | bytes | None]]


class AuditMessage(NamedTuple):
    """One audit record as it goes on the topic."""

    key: bytes
    value: bytes
    headers: Headers
    timestamp_ms: int


# The headers of the current version's records, made once (audit_message, per record).
_HEADERS: dict[tuple[int, str], tuple[tuple[str, bytes], tuple[str, bytes]]] = {
    (AUDIT_VERSION, kind): (
        (HEADER_VERSION, str(AUDIT_VERSION).encode()),
        (HEADER_KIND, kind.encode()),
    )
    for kind in ("upsert", "delete")
}


def audit_message(record: AuditRecord) -> AuditMessage:
    made = _HEADERS.get((record.version, record.kind))
    if made is None:
        made = ((HEADER_VERSION, str(record.version).encode()), (HEADER_KIND, record.kind.encode()))
    headers: Headers = [*made]
    return AuditMessage(
        audit_key(record.resource, record.id), encode_audit(record), headers, record.at_ms
    )


class AuditWriter:
    """Produces audit records to ``topics.audit`` and says when the broker has them all.

    ``record``/``write`` hand records to the producer and return at once (they never raise for
    the broker: a record the producer cannot queue now waits for the next ``flush``). ``flush``
    waits until every record written so far is acknowledged, producing again those the broker
    failed, and raises Retryable while any is not: call it before committing the offsets of the
    window whose records were written, like the dead letters. Thread-safe. Flushes run one at a
    time: otherwise one could take a failed record to produce again while another, not seeing
    it any more, reported success; so a flush that returns means every record written before it
    began is acknowledged (the syncer's windows share flushes on that basis).

    The writer makes its own idempotent, acks=all producer from the definition (``settings``
    override librdkafka settings, for tests); the partitioner is always ``PARTITIONER``. A
    ``producer`` given instead must partition with librdkafka's default, or ``audit why`` looks
    in the wrong partition (``--all-partitions`` still finds everything).
    """

    def __init__(
        self, definition: SyncDefinition, *, producer: Producer | None = None, **settings: Any
    ) -> None:
        self._definition = definition
        self.topic = definition.topics.audit
        self.destination = destination_host(definition.destination.base_url)
        self._producer = producer or Producer(
            producer_settings(definition.source.kafka, **{**settings, "partitioner": PARTITIONER})
        )
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        # Not acknowledged (failed, or never queued): produced again by the next flush.
        self._unsent: list[AuditMessage] = []
        self._errors: list[str] = []
        self.acknowledged = 0

    def record(
        self, name: str, accepted: Iterable[Sent] = (), deleted: Iterable[Removed] = ()
    ) -> int:
        """Audit one resource's delivery (see ``audit_records``); returns how many records."""
        resource = self._definition.resources[name]
        records = audit_records(name, resource, self.destination, accepted, deleted)
        self.write(records)
        return len(records)

    def announce(
        self, name: str, sending: Iterable[Sending] = (), deleting: Iterable[Deleting] = ()
    ) -> int:
        """Write ahead what one request of resource ``name`` is about to carry (see
        ``announced_records``); returns how many records. ``flush`` before the request leaves."""
        resource = self._definition.resources[name]
        records = announced_records(name, resource, self.destination, sending, deleting)
        self.write(records)
        return len(records)

    def write(self, records: Iterable[AuditRecord]) -> None:
        produce = self._produce
        for record in records:
            produce(audit_message(record))
        self._producer.poll(0)  # serve delivery callbacks of earlier records

    @property
    def pending(self) -> int:
        """Records known not to be acknowledged, waiting for the next flush."""
        with self._lock:
            return len(self._unsent)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Block until the broker acknowledged every audit record written; raise Retryable if it
        did not within ``timeout_s`` (the failed ones are kept and produced again next time)."""
        with self._flushing:
            left, errors, unsent = self._flush(timeout_s)
        if left or errors or unsent:
            reason = errors[0] if errors else f"{left} still in flight after {timeout_s:g} s"
            count = max(unsent, left)
            raise Retryable(
                f"the audit topic {self.topic} did not acknowledge {count} "
                f"record{'' if count == 1 else 's'}: {reason}"
            )

    def _flush(self, timeout_s: float) -> tuple[int, list[str], int]:
        """Produce the failed records again, wait for the broker: (still in flight, errors
        since, records known not acknowledged)."""
        with self._lock:  # what failed before is produced again: its errors are history
            again, self._unsent, self._errors = self._unsent, [], []
        for message in again:
            self._produce(message)
        left = self._producer.flush(timeout_s)
        with self._lock:
            errors, self._errors = self._errors, []
            return left, errors, len(self._unsent)

    def _produce(self, message: AuditMessage) -> None:
        try:
            self._producer.produce(
                self.topic,
                value=message.value,
                key=message.key,
                headers=message.headers,
                timestamp=message.timestamp_ms,
                on_delivery=functools.partial(self._delivered, message),
            )
        except (BufferError, KafkaException) as exc:
            with self._lock:
                self._unsent.append(message)
                self._errors.append(f"not queued: {exc}")

    def _delivered(self, message: AuditMessage, error: KafkaError | None, _: Message) -> None:
        with self._lock:
            if error is None:
                self.acknowledged += 1
                return
            self._unsent.append(message)
            self._errors.append(error.str())


def ensure_audit_topic(definition: SyncDefinition) -> None:
    """Create the audit topic if missing, with the dirty topic's partition count and no
    time-based retention; an existing topic is kept as it is. For ``run``, never for ``audit``."""
    kafka, topics = definition.source.kafka, definition.topics
    admin = AdminClient({**kafka.client_settings, "bootstrap.servers": kafka.bootstrap_servers})
    topic = NewTopic(
        topics.audit, topics.dirty_partitions, BROKER_DEFAULT_REPLICATION, config=TOPIC_CONFIG
    )
    futures = admin.create_topics([topic], request_timeout=ADMIN_TIMEOUT_S)
    _created_or_exists(topics.audit, futures[topics.audit])
