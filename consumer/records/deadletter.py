"""The dead-letter topic: where input that can never succeed goes, so work goes on without it.

Two kinds, told apart by the ``reach-sync-dlq-kind`` header (schemas/dead-letter.schema.json):
``event``, a source event stage 1 could not use, kept as its original key, value and headers so
it can be replayed, with where it came from and why in ``reach-sync-dlq-*`` headers; ``record``,
a record Reach rejected, a JSON document keyed ``resource/id``.

Reasons are reach-sync's own messages, naming tables, columns and positions, never row values;
Reach's response body is kept only in a record's value, cut to ``MAX_BODY_BYTES``. More:
docs/design.md, "The flow".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import msgspec
from confluent_kafka import KafkaError, Message, Producer

from consumer.errors import BadRecord
from consumer.router.dirty import Cause, EntityId, dirty_message_key
from consumer.sink.projection import msgspec_hook

__all__ = [
    "HEADER_ERROR_CLASS",
    "HEADER_KIND",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_REASON",
    "HEADER_STAGE",
    "HEADER_TIMESTAMP",
    "HEADER_TOPIC",
    "MAX_BODY_BYTES",
    "DeadLetterEvent",
    "DeadLetterMessage",
    "DeadLetterRecord",
    "Headers",
    "dead_letter_message",
    "dead_letter_record",
    "error_class",
    "produce_dead_letter",
]

HEADER_KIND = "reach-sync-dlq-kind"
HEADER_REASON = "reach-sync-dlq-reason"
HEADER_ERROR_CLASS = "reach-sync-dlq-error-class"
HEADER_STAGE = "reach-sync-dlq-stage"
HEADER_TOPIC = "reach-sync-dlq-topic"
HEADER_PARTITION = "reach-sync-dlq-partition"
HEADER_OFFSET = "reach-sync-dlq-offset"
HEADER_TIMESTAMP = "reach-sync-dlq-timestamp"

# Enough of Reach's error body to see which field failed and why (its 400/422 bodies are a few
# hundred bytes); a bound so that one odd response cannot bloat the topic.
MAX_BODY_BYTES = 2048
# A reason is one of our own sentences; the bound only guards against a library's long message.
MAX_REASON_BYTES = 1024

Stage = Literal["router", "syncer"]
Headers = list[tuple[str, str | bytes | None]]
DeliveryCallback = Callable[[KafkaError | None, Message], None]


class DeadLetterMessage(NamedTuple):
    """What is produced to the dead-letter topic for either kind."""

    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True, slots=True)
class DeadLetterEvent:
    """A source event that could not be used, with where it came from and why."""

    key: bytes | None
    value: bytes | None
    original_headers: tuple[tuple[str, str | bytes | None], ...]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    reason: str
    error_class: str
    stage: Stage = "router"

    @classmethod
    def from_message(
        cls, message: Message, error: Exception, stage: Stage = "router"
    ) -> DeadLetterEvent:
        """The event as consumed, unchanged, plus the error that rejected it."""
        _, timestamp = message.timestamp()
        return cls(
            key=message.key(),
            value=message.value(),
            original_headers=_original_headers(message),
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            timestamp_ms=None if timestamp < 0 else timestamp,
            reason=str(error),
            error_class=error_class(error),
            stage=stage,
        )

    def headers(self) -> Headers:
        """The original headers, then reach-sync's context headers."""
        ours = [
            (HEADER_KIND, "event"),
            (HEADER_REASON, _bounded(self.reason, MAX_REASON_BYTES)),
            (HEADER_ERROR_CLASS, self.error_class),
            (HEADER_STAGE, self.stage),
            (HEADER_TOPIC, self.topic),
            (HEADER_PARTITION, str(self.partition)),
            (HEADER_OFFSET, str(self.offset)),
        ]
        if self.timestamp_ms is not None:
            ours.append((HEADER_TIMESTAMP, str(self.timestamp_ms)))
        return [*self.original_headers, *((k, v.encode()) for k, v in ours)]


class DeadLetterRecord(msgspec.Struct, frozen=True):
    """A record Reach rejected; the value of a ``record`` dead letter (see the schema)."""

    resource: str
    id: EntityId
    tenant: str | None
    payload: dict[str, Any] | None
    payload_sha256: str | None
    cause: Cause
    reason: str
    error_class: str
    http_status: int | None
    body: str | None
    body_truncated: bool
    attempts: int
    first_attempt_ms: int
    last_attempt_ms: int
    stage: Literal["syncer"] = "syncer"


def dead_letter_record(
    *,
    resource: str,
    entity_id: EntityId,
    tenant: str | None,
    cause: Cause,
    error: Exception,
    attempts: int,
    first_attempt_ms: int,
    last_attempt_ms: int,
    payload: Mapping[str, Any] | None = None,
    payload_sha256: str | None = None,
) -> DeadLetterRecord:
    """Build a ``record`` dead letter from the error that rejected it.

    Pass ``payload`` only when it may be stored (no PII it would expose); otherwise pass only its
    ``payload_sha256``, the same hash the audit records. Reach's status and body come from a
    ``BadRecord``; the body is cut to ``MAX_BODY_BYTES`` of UTF-8.
    """
    status = error.status if isinstance(error, BadRecord) else None
    raw_body = error.body if isinstance(error, BadRecord) else None
    body = None if raw_body is None else _bounded(raw_body, MAX_BODY_BYTES)
    return DeadLetterRecord(
        resource=resource,
        id=entity_id,
        tenant=tenant,
        payload=None if payload is None else dict(payload),
        payload_sha256=payload_sha256,
        cause=cause,
        reason=_bounded(str(error), MAX_REASON_BYTES),
        error_class=error_class(error),
        http_status=status,
        body=body,
        body_truncated=body is not None and body != raw_body,
        attempts=attempts,
        first_attempt_ms=first_attempt_ms,
        last_attempt_ms=last_attempt_ms,
    )


_encoder = msgspec.json.Encoder(enc_hook=msgspec_hook)  # a payload's exact numbers


def dead_letter_message(letter: DeadLetterEvent | DeadLetterRecord) -> DeadLetterMessage:
    """Key, value and headers of either kind, as they go on the topic."""
    if isinstance(letter, DeadLetterEvent):
        return DeadLetterMessage(letter.key, letter.value, letter.headers())
    headers: Headers = [
        (HEADER_KIND, b"record"),
        (HEADER_REASON, letter.reason.encode()),
        (HEADER_ERROR_CLASS, letter.error_class.encode()),
        (HEADER_STAGE, letter.stage.encode()),
    ]
    key = dirty_message_key(letter.resource, letter.id)
    return DeadLetterMessage(key, _encoder.encode(letter), headers)


def produce_dead_letter(
    producer: Producer,
    topic: str,
    letter: DeadLetterEvent | DeadLetterRecord,
    on_delivery: DeliveryCallback | None = None,
) -> None:
    """Hand a dead letter to the producer; durable once ``on_delivery`` reports no error.

    Raises BufferError when the producer's queue is full, like ``Producer.produce``.
    """
    message = dead_letter_message(letter)
    producer.produce(
        topic,
        value=message.value,
        key=message.key,
        headers=message.headers,
        on_delivery=on_delivery,
    )


def _original_headers(message: Message) -> tuple[tuple[str, str | bytes | None], ...]:
    headers = message.headers()
    if headers is None:
        return ()
    return tuple(headers.items() if isinstance(headers, dict) else headers)


def error_class(error: BaseException) -> str:
    """The error's qualified class name, e.g. ``consumer.router.debezium.DecodeError``."""
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


def _bounded(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, cut on a character boundary."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")
