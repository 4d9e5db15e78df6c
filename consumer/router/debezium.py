"""Decoding Debezium change events (Kafka Connect JSON, with or without the schema block).

An event is a trigger, not data: all reach-sync needs from it is which table changed, how, the
key and foreign-key columns of the before and after images, and where it came from. A typed
msgspec Struct decodes exactly that and skips the rest, which matters because with schemas on,
the schema block is about three quarters of every message (docs/local-stack.md).

Kafka Connect's JsonConverter writes ``{"schema": ..., "payload": <envelope>}`` with schemas and
the bare envelope without; one Struct with both shapes' fields decodes either in a single pass.
The router's ``EventDecoder`` goes further (docs/benchmarks.md, "Decoding only what routing
needs"): it skips a topic's schema block without scanning it, and keeps of the images only the
columns its triggers read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from consumer.errors import BadRecord

__all__ = [
    "Change",
    "DecodeError",
    "EventDecoder",
    "Ignored",
    "classify_envelope",
    "decode_event",
    "decode_key",
]

Op = Literal["c", "u", "d", "r"]
_ROW_OPS: dict[str, Op] = {"c": "c", "u": "u", "d": "d", "r": "r"}


class DecodeError(BadRecord):
    """The event cannot be understood; it goes to the dead-letter topic with this reason."""


class Change(msgspec.Struct, frozen=True, gc=False):
    """A row changed: ``table`` is ``schema.table`` as the source database names it.

    A Struct: one is built per event on the router's hot path, where a frozen dataclass's
    construction cost several times more. Without garbage-collector tracking, as it holds only
    decoded JSON, which cannot form a cycle.
    """

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


_NULL = msgspec.Raw(b"null")
# What decoding a message can raise: msgspec's errors, and RecursionError for a value nested
# deeper than msgspec follows (a poison message: let through, it stopped the router for good).
_UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


class _Source(msgspec.Struct):
    schema: str | None = None
    table: str | None = None
    ts_ms: int | None = None
    lsn: int | None = None


class _Envelope(msgspec.Struct):
    """The change envelope; every field optional so the same type reads metadata events too.

    The images stay undecoded (a slice of the message) until the table says which columns of
    them matter.
    """

    before: msgspec.Raw = _NULL
    after: msgspec.Raw = _NULL
    op: str | None = None
    source: _Source | None = None
    ts_ms: int | None = None
    status: str | None = None  # transaction metadata: BEGIN / END


class _Value(_Envelope):
    """Either shape: ``payload`` (with schemas) or the envelope's own fields (without). The
    schema block is kept as a slice, never built: the decoder learns the topic's prefix from it."""

    payload: _Envelope | None = None
    schema: msgspec.Raw = msgspec.Raw()


class _WrappedKey(msgspec.Struct):
    """Connect's key with its schema block: the block is kept as a slice, never built."""

    payload: dict[str, Any]
    schema: msgspec.Raw = msgspec.Raw()


_value_decoder = msgspec.json.Decoder(_Value)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
# A bare key's columns, or a whole image.
_object_decoder = msgspec.json.Decoder(dict[str, Any])
_wrapped_key_decoder = msgspec.json.Decoder(_WrappedKey)
_SCHEMA_FIRST = b'{"schema":'
_PAYLOAD_NEXT = b',"payload":'
# Topics whose schema prefixes are remembered; past this the memory starts over (a pattern
# subscription can match many topics, and a prefix is a few KB).
_MAX_TOPICS = 1024
# Schema prefixes remembered per topic: a topic can carry several tables (a routing SMT merges
# shards) or two versions of one table's schema while it changes.
_PREFIXES_PER_TOPIC = 4


def decode_key(raw: bytes | None) -> dict[str, Any]:
    """The key columns of the row. Connect's key is ``{"schema", "payload"}`` or bare columns."""
    return _decode_key(raw)[0]


def decode_event(key: bytes | None, value: bytes | None) -> Change | Ignored:
    """Decode one Kafka record of a Debezium topic, whole images included; raise DecodeError
    for anything malformed."""
    return _GENERIC.decode(key, value)


class EventDecoder:
    """Decodes one router's events, taking from each only what routing needs.

    ``columns`` maps a table (``schema.table``) to the image columns its triggers read; a
    change of such a table carries only those in ``before`` and ``after`` (a missing column
    reads as None, as a null one does). Other tables' images are decoded whole.

    The schema block of a topic's events is the same until its table changes. Once a full
    decode of an event of ``topic`` learned it, an event that starts with exactly that block
    and ``,"payload":`` is decoded from its payload on: a comparison of bytes instead of
    scanning some 3 KB of JSON (a few blocks are remembered per topic). Anything else takes
    the full path, so the result is the same. Not thread-safe: one per consumer loop.
    """

    def __init__(self, columns: Mapping[str, Iterable[str]] | None = None) -> None:
        self._images: dict[str, msgspec.json.Decoder[Any]] = {}
        self._columns: dict[str, tuple[tuple[str, str], ...]] = {}
        for table, names in (columns or {}).items():
            ordered = tuple(dict.fromkeys(names))
            fields = [(f"c{n}", Any, None) for n in range(len(ordered))]
            rename = {f"c{n}": name for n, name in enumerate(ordered)}
            image = msgspec.defstruct("Image", fields, rename=rename, gc=False)
            self._images[table] = msgspec.json.Decoder(image)
            self._columns[table] = tuple(zip(ordered, rename, strict=True))
        # Events whose schema block was known, decoded from their payload on.
        self.shortcuts = 0
        # Never holds None: without a topic, nothing is remembered.
        self._value_prefixes: dict[str | None, list[bytes]] = {}
        self._key_prefixes: dict[str | None, list[bytes]] = {}

    def decode(
        self, key: bytes | None, value: bytes | None, topic: str | None = None
    ) -> Change | Ignored:
        """Decode one Kafka record of ``topic``; raise DecodeError for anything malformed."""
        if value is None:
            return Ignored("tombstone")
        envelope = self._envelope(value, topic)
        source, before, after = envelope.source, envelope.before, envelope.after
        verdict = classify_envelope(
            envelope.op,
            envelope.status,
            None if source is None else source.schema,
            None if source is None else source.table,
            has_before=before != _NULL,
            has_after=after != _NULL,
            has_source=source is not None,
        )
        if isinstance(verdict, Ignored):
            return verdict
        row_op, table = verdict
        assert source is not None  # classify_envelope refused an envelope without one
        return Change(
            table,
            row_op,
            self._key(key, topic),
            None if before == _NULL else self._image(before, table, "before"),
            None if after == _NULL else self._image(after, table, "after"),
            source.ts_ms,
            source.lsn,
        )

    def _envelope(self, value: bytes, topic: str | None) -> _Envelope:
        payload = _payload(value, self._value_prefixes.get(topic))
        if payload is not None:
            try:
                envelope = _envelope_decoder.decode(payload)
                self.shortcuts += 1
                return envelope
            except _UNDECODABLE:
                pass  # not that shape after all: the full path decodes it, or says why not
        try:
            decoded = _value_decoder.decode(value)
        except _UNDECODABLE as exc:
            raise DecodeError(f"the value is not a Debezium envelope: {exc}") from exc
        if decoded.payload is None:
            return decoded
        self._learn(self._value_prefixes, topic, value, decoded.schema)
        return decoded.payload

    def _key(self, raw: bytes | None, topic: str | None) -> dict[str, Any]:
        payload = _payload(raw, self._key_prefixes.get(topic))
        if payload is not None:
            try:
                columns: dict[str, Any] = _object_decoder.decode(payload)
                return columns
            except _UNDECODABLE:
                pass  # not an object after all: the full path says why
        key, schema = _decode_key(raw)
        if raw is not None:
            self._learn(self._key_prefixes, topic, raw, schema)
        return key

    def _image(self, raw: msgspec.Raw, table: str, name: str) -> dict[str, Any]:
        decoder = self._images.get(table)
        try:
            if decoder is None:
                image: dict[str, Any] = _object_decoder.decode(raw)
                return image
            projected = decoder.decode(raw)
        except _UNDECODABLE as exc:
            raise DecodeError(f"the {name} image is not an object: {exc}") from exc
        return {column: getattr(projected, attr) for column, attr in self._columns[table]}

    @staticmethod
    def _learn(
        prefixes: dict[str | None, list[bytes]], topic: str | None, raw: bytes, schema: msgspec.Raw
    ) -> None:
        """Remember the topic's prefix, if the message starts with it as Connect writes it.
        Without a topic nothing is remembered: ``decode_event`` stays a pure function."""
        if not topic or not len(schema):
            return
        prefix = _SCHEMA_FIRST + bytes(schema) + _PAYLOAD_NEXT
        if not raw.startswith(prefix):
            return
        if len(prefixes) >= _MAX_TOPICS and topic not in prefixes:
            prefixes.clear()
        known = prefixes.setdefault(topic, [])
        if prefix not in known:
            known.insert(0, prefix)
            del known[_PREFIXES_PER_TOPIC:]


_GENERIC = EventDecoder()


def _payload(raw: bytes | None, prefixes: list[bytes] | None) -> bytes | None:
    """The payload's bytes of a message that starts with one of the topic's schema prefixes.

    A copy rather than a memoryview: cheaper to make for a payload this size, and the images
    the envelope keeps as slices then hold the payload alive, not the whole message.
    """
    if prefixes is None or raw is None or not raw.endswith(b"}"):
        return None
    for prefix in prefixes:
        if raw.startswith(prefix):
            return raw[len(prefix) : -1]
    return None


def _decode_key(raw: bytes | None) -> tuple[dict[str, Any], msgspec.Raw]:
    """The key columns, and the schema block (empty when the key has none)."""
    if raw is None:
        raise DecodeError("the event has no key (a table without a primary key?)")
    if raw.startswith(_SCHEMA_FIRST):  # the usual shape, as Connect writes it
        try:
            wrapped = _wrapped_key_decoder.decode(raw)
            return wrapped.payload, wrapped.schema
        except _UNDECODABLE:
            pass  # not that shape after all: decoded generically below, with its error
    try:
        key = _object_decoder.decode(raw)
    except _UNDECODABLE as exc:
        raise DecodeError(f"the key is not JSON: {exc}") from exc
    if key.keys() == {"schema", "payload"}:
        payload = key["payload"]
        if not isinstance(payload, dict):
            raise DecodeError("the key's payload is not an object")
        return payload, msgspec.Raw()
    return key, msgspec.Raw()


def classify_envelope(
    op: Any,
    status: Any,
    source_schema: Any,
    source_table: Any,
    *,
    has_before: bool,
    has_after: bool,
    has_source: bool,
) -> Ignored | tuple[Op, str]:
    """What an envelope is, by Debezium's rules, whatever its serialization: an event that
    triggers nothing (``Ignored``), or a row change (its op and ``schema.table``); raise
    DecodeError for anything else. The JSON and Avro decoders both judge by this."""
    if op is None:
        if status in ("BEGIN", "END"):
            return Ignored("transaction-metadata")
        if not has_before and not has_after and not has_source:
            # Debezium's heartbeat value is {"ts_ms": ...}.
            return Ignored("heartbeat")
        raise DecodeError("the envelope has no op")
    if op == "t":
        return Ignored("truncate")
    if op == "m":
        return Ignored("message")
    row_op = _ROW_OPS.get(op) if isinstance(op, str) else None
    if row_op is None:
        raise DecodeError(f"unknown op {op!r}")
    if not has_source or not source_schema or not source_table:
        raise DecodeError("the envelope has no source schema and table")
    if not (has_before if row_op == "d" else has_after):
        raise DecodeError(f"op {op!r} without its {'before' if row_op == 'd' else 'after'} image")
    return row_op, f"{source_schema}.{source_table}"
