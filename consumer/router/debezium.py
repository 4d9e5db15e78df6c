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

from collections.abc import Callable, Iterable, Mapping
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
_ROW_OPS: dict[str | None, Op] = {"c": "c", "u": "u", "d": "d", "r": "r"}


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


class _Source(msgspec.Struct, gc=False):
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
    scanning some 3 KB of JSON (a few blocks are remembered per topic). The block is learned
    with the table its event changed, and while the payload names that table the envelope and
    both images are decoded in one pass, typed for that table. Anything else takes the full
    path, so the result is the same. Not thread-safe: one per consumer loop.
    """

    def __init__(self, columns: Mapping[str, Iterable[str]] | None = None) -> None:
        self._columns = {t: tuple(dict.fromkeys(names)) for t, names in (columns or {}).items()}
        self._tables: dict[str, _TableDecoder] = {}
        # Events whose schema block was known, decoded from their payload on; of them, those
        # decoded in one pass, typed for the table their block was learned with.
        self.shortcuts = 0
        self.one_pass = 0
        # Never holds None: without a topic, nothing is remembered.
        self._value_prefixes: dict[str | None, list[_Shortcut]] = {}
        self._key_prefixes: dict[str | None, list[_Shortcut]] = {}

    def decode(
        self, key: bytes | None, value: bytes | None, topic: str | None = None
    ) -> Change | Ignored:
        """Decode one Kafka record of ``topic``; raise DecodeError for anything malformed."""
        if value is None:
            return Ignored("tombstone")
        shortcut = _shortcut(value, self._value_prefixes.get(topic))
        if shortcut is not None and shortcut.typed is not None:
            change = self._typed(key, value, topic, shortcut, shortcut.typed)
            if change is not None:
                return change
        envelope, prefix = self._envelope(value, topic, shortcut)
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
            if prefix is not None:
                self._learn_value(topic, prefix, None)
            return verdict
        row_op, table = verdict
        assert source is not None  # classify_envelope refused an envelope without one
        if prefix is not None:
            self._learn_value(topic, prefix, source)
        return Change(
            table,
            row_op,
            self._key(key, topic),
            None if before == _NULL else self._image(before, table, "before"),
            None if after == _NULL else self._image(after, table, "after"),
            source.ts_ms,
            source.lsn,
        )

    def _typed(
        self,
        key: bytes | None,
        value: bytes,
        topic: str | None,
        shortcut: _Shortcut,
        typed: _TableDecoder,
    ) -> Change | None:
        """The usual event, in one pass: a row change of the table its schema block was
        learned with, its key's block known too. None for anything else (another table behind
        the same block, another op, an image or key that is not an object): the general path
        then judges it."""
        try:
            envelope = typed.envelope.decode(value[len(shortcut.prefix) : -1])
        except _UNDECODABLE:
            return None
        source = envelope.source
        op = _ROW_OPS.get(envelope.op)
        if (
            op is None
            or source is None
            or source.table != shortcut.source_table
            or source.schema != shortcut.source_schema
        ):
            return None
        before, after = envelope.before, envelope.after
        if (before if op == "d" else after) is None:
            return None
        known = _shortcut(key, self._key_prefixes.get(topic))
        if known is None:
            return None
        assert key is not None
        try:
            columns: dict[str, Any] = _object_decoder.decode(key[len(known.prefix) : -1])
        except _UNDECODABLE:
            return None
        self.shortcuts += 1
        self.one_pass += 1
        image = typed.image
        return Change(
            typed.table,
            op,
            columns,
            None if before is None else image(before),
            None if after is None else image(after),
            source.ts_ms,
            source.lsn,
        )

    def _envelope(
        self, value: bytes, topic: str | None, shortcut: _Shortcut | None
    ) -> tuple[_Envelope, bytes | None]:
        """The envelope, and the schema prefix to learn from it: one decoded whole, or a
        known one learned without a table (a row change then gives it one)."""
        if shortcut is not None:
            try:
                envelope = _envelope_decoder.decode(value[len(shortcut.prefix) : -1])
                self.shortcuts += 1
                return envelope, shortcut.prefix if shortcut.typed is None else None
            except _UNDECODABLE:
                pass  # not that shape after all: the full path decodes it, or says why not
        try:
            decoded = _value_decoder.decode(value)
        except _UNDECODABLE as exc:
            raise DecodeError(f"the value is not a Debezium envelope: {exc}") from exc
        if decoded.payload is None:
            return decoded, None
        # Without a topic nothing is remembered: ``decode_event`` stays a pure function.
        return decoded.payload, _prefix_of(value, decoded.schema) if topic else None

    def _key(self, raw: bytes | None, topic: str | None) -> dict[str, Any]:
        shortcut = _shortcut(raw, self._key_prefixes.get(topic))
        if shortcut is not None:
            assert raw is not None
            try:
                columns: dict[str, Any] = _object_decoder.decode(raw[len(shortcut.prefix) : -1])
                return columns
            except _UNDECODABLE:
                pass  # not an object after all: the full path says why
        key, schema = _decode_key(raw)
        prefix = _prefix_of(raw, schema) if raw is not None and topic else None
        if prefix is not None:
            assert topic is not None
            _remember(self._key_prefixes, topic, _Shortcut(prefix))
        return key

    def _image(self, raw: msgspec.Raw, table: str, name: str) -> dict[str, Any]:
        try:
            return self._table(table).image_of(raw)
        except _UNDECODABLE as exc:
            raise DecodeError(f"the {name} image is not an object: {exc}") from exc

    def _table(self, table: str) -> _TableDecoder:
        typed = self._tables.get(table)
        if typed is None:
            if len(self._tables) >= _MAX_TOPICS:
                self._tables.clear()  # as the prefixes' memory: tables come from the events
            typed = self._tables[table] = _TableDecoder.of(table, self._columns.get(table))
        return typed

    def _learn_value(self, topic: str | None, prefix: bytes, source: _Source | None) -> None:
        """Remember the topic's schema prefix with the table of the row change that carried
        it (``source``; None for an event that triggers nothing, such as a truncate)."""
        if not topic:
            return
        shortcut = _Shortcut(prefix)
        if source is not None and source.schema is not None and source.table is not None:
            typed = self._table(f"{source.schema}.{source.table}")
            shortcut = _Shortcut(prefix, typed, source.schema, source.table)
        _remember(self._value_prefixes, topic, shortcut)


_GENERIC = EventDecoder()


@dataclass(frozen=True, slots=True)
class _Shortcut:
    """A schema prefix a topic's messages start with: ``{"schema":<block>,"payload":``.

    A value's is learned with the row change that carried it: ``typed`` decodes that table's
    events, and ``source_*`` name it as its events do. A key's has neither."""

    prefix: bytes
    typed: _TableDecoder | None = None
    source_schema: str | None = None
    source_table: str | None = None


def _shortcut(raw: bytes | None, known: list[_Shortcut] | None) -> _Shortcut | None:
    """The known prefix ``raw`` starts with, if it ends as a wrapped message does.

    The payload is then ``raw[len(prefix):-1]``: a copy rather than a memoryview, cheaper to
    make for a payload this size, and what the envelope keeps as slices then holds the
    payload alive, not the whole message."""
    if known is None or raw is None or not raw.endswith(b"}"):
        return None
    for shortcut in known:
        if raw.startswith(shortcut.prefix):
            return shortcut
    return None


def _prefix_of(raw: bytes, schema: msgspec.Raw) -> bytes | None:
    """The message's schema prefix, if it starts with its decoded block as Connect writes it."""
    if not len(schema):
        return None
    prefix = _SCHEMA_FIRST + bytes(schema) + _PAYLOAD_NEXT
    return prefix if raw.startswith(prefix) else None


def _remember(memory: dict[str | None, list[_Shortcut]], topic: str, shortcut: _Shortcut) -> None:
    """Keep ``shortcut`` first among the topic's, unless its prefix is known already; a
    prefix known without a table takes the table ``shortcut`` brings."""
    if len(memory) >= _MAX_TOPICS and topic not in memory:
        memory.clear()
    known = memory.setdefault(topic, [])
    for n, old in enumerate(known):
        if old.prefix == shortcut.prefix:
            if old.typed is None:
                known[n] = shortcut
            return
    known.insert(0, shortcut)
    del known[_PREFIXES_PER_TOPIC:]


@dataclass(frozen=True, slots=True)
class _TableDecoder:
    """One table's images as routing reads them, and its envelope typed with them, so that
    the usual event is decoded in one pass (``EventDecoder._typed``)."""

    table: str
    envelope: msgspec.json.Decoder[Any]
    image_decoder: msgspec.json.Decoder[Any]
    # A decoded image → its columns.
    image: Callable[[Any], dict[str, Any]]

    def image_of(self, raw: msgspec.Raw) -> dict[str, Any]:
        return self.image(self.image_decoder.decode(raw))

    @classmethod
    def of(cls, table: str, columns: tuple[str, ...] | None) -> _TableDecoder:
        """Images of only ``columns`` (the rest skipped, not built), or whole (None)."""
        image_type: Any = dict[str, Any]
        image: Callable[[Any], dict[str, Any]] = _whole
        if columns is not None:
            image_type, image = _projection(columns)
        envelope = msgspec.defstruct(
            "TypedEnvelope",
            [
                ("before", image_type | None, None),
                ("after", image_type | None, None),
                ("op", str | None, None),
                ("source", _Source | None, None),
                # Not read here, but typed as _Envelope types them: a message the general
                # path refuses is refused on this one too.
                ("ts_ms", int | None, None),
                ("status", str | None, None),
            ],
            gc=False,
        )
        return cls(table, msgspec.json.Decoder(envelope), msgspec.json.Decoder(image_type), image)


def _whole(image: dict[str, Any]) -> dict[str, Any]:
    return image


def _projection(columns: tuple[str, ...]) -> tuple[Any, Callable[[Any], dict[str, Any]]]:
    """A Struct of ``columns``, and how to read one as a dict. Named by the columns themselves
    when they are plain identifiers, so that msgspec's ``asdict`` (in C) builds the dict;
    otherwise by position, renamed, read field by field."""
    if all(c.isidentifier() and not c.startswith("_") for c in columns):
        fields = [(c, Any, None) for c in columns]
        named = msgspec.defstruct("Image", fields, gc=False)
        return named, msgspec.structs.asdict
    attrs = [f"c{n}" for n in range(len(columns))]
    renamed = msgspec.defstruct(
        "Image",
        [(a, Any, None) for a in attrs],
        rename=dict(zip(attrs, columns, strict=True)),
        gc=False,
    )
    pairs = tuple(zip(columns, attrs, strict=True))
    return renamed, lambda image: {c: getattr(image, a) for c, a in pairs}


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
