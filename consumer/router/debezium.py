"""Decoding Debezium change events (Kafka Connect JSON, with or without the schema block).

An event is a trigger, not data: all reach-sync needs from it is which table changed, how, the
key and foreign-key columns of the before and after images, and where it came from. A typed
msgspec Struct decodes exactly that and skips the rest, which matters because with schemas on,
the schema block is about three quarters of every message (docs/local-stack.md).

Kafka Connect's JsonConverter writes ``{"schema": ..., "payload": <envelope>}`` with schemas and
the bare envelope without; one Struct with both shapes' fields decodes either in a single pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from consumer.errors import BadRecord

__all__ = ["Change", "DecodeError", "Ignored", "decode_event", "decode_key"]

Op = Literal["c", "u", "d", "r"]
_ROW_OPS: dict[str, Op] = {"c": "c", "u": "u", "d": "d", "r": "r"}


class DecodeError(BadRecord):
    """The event cannot be understood; it goes to the dead-letter topic with this reason."""


@dataclass(frozen=True, slots=True)
class Change:
    """A row changed: ``table`` is ``schema.table`` as the source database names it."""

    table: str
    op: Op
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source_ts_ms: int | None
    lsn: int | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """An event that is fine but triggers nothing; ``reason`` is a short, countable label."""

    reason: Literal["tombstone", "transaction-metadata", "heartbeat", "truncate", "message"]


class _Source(msgspec.Struct):
    schema: str | None = None
    table: str | None = None
    ts_ms: int | None = None
    lsn: int | None = None


class _Envelope(msgspec.Struct):
    """The change envelope; every field optional so the same type reads metadata events too."""

    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    op: str | None = None
    source: _Source | None = None
    ts_ms: int | None = None
    status: str | None = None  # transaction metadata: BEGIN / END


class _Value(_Envelope):
    """Either shape: ``payload`` (with schemas) or the envelope's own fields (without)."""

    payload: _Envelope | None = None


class _WrappedKey(msgspec.Struct):
    """Connect's key with its schema block: the block is skipped, never built."""

    payload: dict[str, Any]


_value_decoder = msgspec.json.Decoder(_Value)
_key_decoder = msgspec.json.Decoder(dict[str, Any])
_wrapped_key_decoder = msgspec.json.Decoder(_WrappedKey)
_SCHEMA_FIRST = b'{"schema":'


def decode_key(raw: bytes | None) -> dict[str, Any]:
    """The key columns of the row. Connect's key is ``{"schema", "payload"}`` or bare columns."""
    if raw is None:
        raise DecodeError("the event has no key (a table without a primary key?)")
    if raw.startswith(_SCHEMA_FIRST):  # the usual shape, as Connect writes it
        try:
            return _wrapped_key_decoder.decode(raw).payload
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # not that shape after all: decoded generically below, with its error
    try:
        key = _key_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"the key is not JSON: {exc}") from exc
    if key.keys() == {"schema", "payload"}:
        payload = key["payload"]
        if not isinstance(payload, dict):
            raise DecodeError("the key's payload is not an object")
        return payload
    return key


def decode_event(key: bytes | None, value: bytes | None) -> Change | Ignored:
    """Decode one Kafka record of a Debezium topic; raise DecodeError for anything malformed."""
    if value is None:
        return Ignored("tombstone")
    try:
        decoded = _value_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"the value is not a Debezium envelope: {exc}") from exc
    envelope: _Envelope = decoded.payload if decoded.payload is not None else decoded
    op = envelope.op
    if op is None:
        return _without_op(envelope)
    if op == "t":
        return Ignored("truncate")
    if op == "m":
        return Ignored("message")
    row_op = _ROW_OPS.get(op)
    if row_op is None:
        raise DecodeError(f"unknown op {op!r}")
    source = envelope.source
    if source is None or not source.schema or not source.table:
        raise DecodeError("the envelope has no source schema and table")
    image = envelope.after if row_op != "d" else envelope.before
    if image is None:
        raise DecodeError(f"op {op!r} without its {'before' if row_op == 'd' else 'after'} image")
    return Change(
        table=f"{source.schema}.{source.table}",
        op=row_op,
        key=decode_key(key),
        before=envelope.before,
        after=envelope.after,
        source_ts_ms=source.ts_ms,
        lsn=source.lsn,
    )


def _without_op(envelope: _Envelope) -> Ignored:
    if envelope.status in ("BEGIN", "END"):
        return Ignored("transaction-metadata")
    if envelope.before is None and envelope.after is None and envelope.source is None:
        # Debezium's heartbeat value is {"ts_ms": ...}.
        return Ignored("heartbeat")
    raise DecodeError("the envelope has no op")
