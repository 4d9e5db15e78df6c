"""Decoding Debezium change events in Confluent's Avro wire format.

Confluent's AvroConverter writes a zero byte, the writer schema's registry id (4 bytes, big
endian), then the record in Avro binary. The writer schema is fetched from the registry once
per id and prepared once (parsed, and a converter built for its values): no message is decoded
against a schema parsed for it. A new schema id mid-stream (a column added) is just another id.

The values come out as Kafka Connect's JsonConverter writes the same data, so triggers, lookups
and plans behave the same whatever the format (docs/avro.md):

* logical types are read as their underlying type: ``io.debezium.time.*`` and Connect's Date,
  Time and Timestamp are integers in JSON too;
* bytes (Connect's Decimal, ``bytea``, Debezium's unavailable-value placeholder of a bytes
  column) become base64 text, as JsonConverter writes bytes;
* an Avro ``float`` becomes the shortest decimal that reads back as the same 32-bit float, as
  Java prints it into JSON (``1.1``, not ``1.100000023841858``).

Bad input is classified once, here: an id the registry does not know, a payload that does not
match its writer schema and a message without the magic byte are the event's fault
(``DecodeError``, dead-lettered with the reason); a registry that cannot answer is not
(``RegistryUnavailable``, retried: the router rewinds and pauses, nothing is lost).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import fastavro

from consumer.errors import Retryable
from consumer.router.avro_reader import (
    CompiledReader,
    Keep,
    Scan,
    Unreadable,
    compile_reader,
    float32_text,
    full_name,
    native_scan,
)
from consumer.router.debezium import Change, DecodeError, Ignored, classify_envelope

if TYPE_CHECKING:
    from consumer.config import SchemaRegistry

__all__ = [
    "MAGIC",
    "MAGIC_BYTE",
    "AvroDecoder",
    "RegistrySchemas",
    "RegistryUnavailable",
    "UnknownSchemaId",
    "WriterSchemas",
    "is_avro",
]

log = logging.getLogger(__name__)

MAGIC = 0
MAGIC_BYTE = bytes([MAGIC])
_HEADER = 5  # the magic byte and the schema id
# An id the registry said it does not know is asked again after this long, not per message: a
# burst of such events costs one request, and an id registered late is still found.
_UNKNOWN_TTL_S = 30.0

Converter = Callable[[Any], Any]


class UnknownSchemaId(DecodeError):
    """The registry does not know the message's schema id: the event cannot be read."""


class RegistryUnavailable(Retryable):
    """The registry did not answer (down, 5xx, 429, refused credentials): not the event's
    fault, so the batch is retried rather than dead-lettered."""


class WriterSchemas(Protocol):
    """Where writer schemas come from, by id (the registry; a dict in tests)."""

    def fetch(self, schema_id: int) -> str:
        """The Avro schema text; raise UnknownSchemaId or RegistryUnavailable."""
        ...


def is_avro(raw: bytes | None) -> bool:
    """Confluent's wire format starts with a zero byte, which no JSON text does."""
    return raw is not None and raw.startswith(MAGIC_BYTE)


class RegistrySchemas:
    """``WriterSchemas`` from a Confluent Schema Registry, through confluent-kafka's client.

    The client's own retries are off: a failed fetch raises at once, and the router's backoff
    (which rewinds the batch) decides when to ask again.
    """

    def __init__(self, settings: SchemaRegistry, client: Any = None) -> None:
        if client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            client = SchemaRegistryClient(client_config(settings))
        self._client = client
        self._url = settings.url

    def close(self) -> None:
        """Close the client's HTTP connections."""
        self._client.close()

    def fetch(self, schema_id: int) -> str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            status = exc.http_status_code
            if status == 404:
                raise UnknownSchemaId(f"schema id {schema_id} is unknown to the registry") from exc
            if status in (401, 403):
                raise RegistryUnavailable(
                    f"the schema registry refused reach-sync's credentials ({status})"
                ) from exc
            raise RegistryUnavailable(
                f"the schema registry answered {status} for schema id {schema_id}"
            ) from exc
        except Exception as exc:
            # Everything else the client raises is its transport failing (refused, reset, timed
            # out, TLS): httpx's or httpx2's errors, whichever the client was installed with.
            raise RegistryUnavailable(
                f"the schema registry at {self._url} is unreachable: {type(exc).__name__}"
            ) from exc
        kind = schema.schema_type or "AVRO"
        if kind != "AVRO":
            raise DecodeError(f"schema id {schema_id} is {kind}, not Avro")
        if schema.references:
            raise DecodeError(f"schema id {schema_id} has references, which are not supported")
        text: str = schema.schema_str
        return text


def client_config(settings: SchemaRegistry) -> dict[str, Any]:
    """``SchemaRegistryClient``'s configuration from the definition's."""
    config: dict[str, Any] = {
        **settings.client_settings,
        "url": settings.url,
        "timeout": settings.timeout_s,
        "max.retries": 0,
    }
    if settings.basic_auth_user_info is not None:
        config["basic.auth.credentials.source"] = "USER_INFO"
        config["basic.auth.user.info"] = settings.basic_auth_user_info.get_secret_value()
    for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
        value = getattr(settings, name)
        if value is not None:
            config[name.replace("_", ".")] = value
    return config


@dataclass(frozen=True, slots=True)
class _Reader:
    """One writer schema, prepared: parsed without its logical types, and the converter that
    turns what fastavro reads into what JsonConverter would have written."""

    schema_id: int
    schema: Any  # its JSON form, logical types removed
    parsed: Any
    convert: Converter | None

    def read(self, raw: bytes) -> Any:
        stream = io.BytesIO(raw)
        stream.seek(_HEADER)
        try:
            value = fastavro.schemaless_reader(stream, self.parsed, None)
        except (
            EOFError,
            StopIteration,
            ValueError,
            IndexError,
            TypeError,
            UnicodeDecodeError,
        ) as e:
            raise DecodeError(
                f"the message does not match its writer schema {self.schema_id}: "
                f"{type(e).__name__}: {e}"
            ) from e
        left = len(raw) - stream.tell()
        if left:
            raise DecodeError(
                f"the message does not match its writer schema {self.schema_id}: "
                f"{left} bytes left over after the record"
            )
        return value if self.convert is None else self.convert(value)


class AvroDecoder:
    """Decodes events (and keys) in Confluent's Avro wire format into the router's ``Change``.

    ``columns`` is the JSON decoder's: a table's images keep only the columns its triggers
    read. Not thread-safe: one per consumer loop, like the JSON decoder.
    """

    def __init__(
        self,
        schemas: WriterSchemas,
        columns: Mapping[str, Iterable[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        scan: Scan | None = native_scan,
    ) -> None:
        self._schemas = schemas
        self._scan = scan  # the C reader of compiled schemas; None: generated Python
        if native_scan is None:
            log.warning(
                "Avro events are read by the generated Python reader: reach-sync was installed "
                "without its C extension (no C compiler at install), which reads them about "
                "four times faster (docs/avro.md)"
            )
        self._columns = {t: tuple(dict.fromkeys(names)) for t, names in (columns or {}).items()}
        self._readers: dict[int, _Reader] = {}
        # Per schema id, once its first message was read whole: the compiled reader of what
        # routing needs (avro_reader.py), or None where the schema could not be compiled.
        self._fast: dict[int, _Fast | None] = {}
        # The compiled readers by the first five bytes of their messages (the magic byte and
        # the id): one lookup finds a known schema's reader.
        self._by_header: dict[bytes, _Fast] = {}
        self._unknown: dict[int, tuple[float, UnknownSchemaId]] = {}
        self._clock = clock
        self._one_pass = 0

    @property
    def one_pass(self) -> int:
        """How many row changes a compiled reader read and judged in one step (the rest went
        the general way: first messages of a schema, other tables, non-row events)."""
        return self._one_pass

    @property
    def schema_ids(self) -> int:
        """How many writer schemas have been prepared."""
        return len(self._readers)

    def decode_key(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            raise DecodeError("the event has no key (a table without a primary key?)")
        key = self._read(raw, "key")
        if not isinstance(key, dict):
            raise DecodeError("the key is not an Avro record")
        return key

    def decode(
        self,
        key: bytes | None,
        value: bytes | None,
        key_decoder: Callable[[bytes | None], dict[str, Any]] | None = None,
    ) -> Change | Ignored:
        """One Kafka record of a Debezium topic whose value is Avro; its key is read by
        ``key_decoder`` (by default as Avro), and only for a row change."""
        if value is None:
            return Ignored("tombstone")
        read_key = key_decoder or self.decode_key
        fast = self._by_header.get(value[:_HEADER])
        if fast is not None and fast.table is not None:
            found = self._fast_change(fast, value, key, read_key)
            if type(found) is Change:
                return found
            # Not a row change of its table: judged the general way, without reading it again.
            envelope = self._read_whole(value, "value") if found is None else found
        else:
            envelope = self._read(value, "value")
        if not isinstance(envelope, dict):
            raise DecodeError("the value is not a Debezium envelope (not an Avro record)")
        return self._change(envelope, key, read_key)

    def _fast_change(
        self,
        fast: _Fast,
        value: bytes,
        raw_key: bytes | None,
        read_key: Callable[[bytes | None], dict[str, Any]],
    ) -> Change | dict[str, Any] | None:
        """A row change of the table ``fast`` was compiled for, read by its compiled reader and
        judged as ``_change`` judges it, in one step. Anything else goes the general way: the
        envelope as read when it is of that table (an op that is no row change, a missing or
        odd image), for ``_change`` to judge; None when fastavro must read it (bytes the reader
        refuses, another table under the schema)."""
        try:
            envelope: dict[str, Any] = fast.reader.read(value, _HEADER)
        except Unreadable:
            return None
        source, op = envelope.get("source"), envelope.get("op")
        if (
            type(source) is not dict
            or source.get("table") != fast.source_table
            or source.get("schema") != fast.source_schema
        ):
            return None
        if op not in _ROW_OPS:
            return envelope
        before, after = envelope.get("before"), envelope.get("after")
        if (before if op == "d" else after) is None:
            return envelope
        if not (before is None or type(before) is dict) or not (
            after is None or type(after) is dict
        ):
            return envelope
        table = fast.table
        assert table is not None
        if not fast.exact_images:
            before = None if before is None else self._image(before, table, "before")
            after = None if after is None else self._image(after, table, "after")
        ts_ms, lsn = source.get("ts_ms"), source.get("lsn")
        change = Change(
            table,
            op,
            read_key(raw_key),
            before,
            after,
            ts_ms if type(ts_ms) is int else None,
            lsn if type(lsn) is int else None,
        )
        self._one_pass += 1
        return change

    def _change(
        self,
        envelope: dict[str, Any],
        raw_key: bytes | None,
        read_key: Callable[[bytes | None], dict[str, Any]],
    ) -> Change | Ignored:
        op, source = envelope.get("op"), envelope.get("source")
        before, after = envelope.get("before"), envelope.get("after")
        if (
            op in _ROW_OPS
            and type(source) is dict
            and source.get("schema")
            and source.get("table")
            and (before if op == "d" else after) is not None
        ):
            # The common case, judged as classify_envelope judges it, without the call.
            table = f"{source['schema']}.{source['table']}"
        else:
            if source is not None and not isinstance(source, dict):
                raise DecodeError("the envelope's source is not a record")
            verdict = classify_envelope(
                op,
                envelope.get("status"),
                None if source is None else source.get("schema"),
                None if source is None else source.get("table"),
                has_before=before is not None,
                has_after=after is not None,
                has_source=source is not None,
            )
            if isinstance(verdict, Ignored):
                return verdict
            op, table = verdict
        assert isinstance(source, dict)  # classify_envelope refused an envelope without one
        return Change(
            table,
            op,
            read_key(raw_key),
            None if before is None else self._image(before, table, "before"),
            None if after is None else self._image(after, table, "after"),
            _int_or_none(source.get("ts_ms")),
            _int_or_none(source.get("lsn")),
        )

    def _image(self, image: Any, table: str, name: str) -> dict[str, Any]:
        if not isinstance(image, dict):
            raise DecodeError(f"the {name} image is not a record")
        columns = self._columns.get(table)
        if columns is None:
            return image
        return {column: image.get(column) for column in columns}

    def _read(self, raw: bytes, part: str) -> Any:
        """A key, or a value that is no envelope of one table: read by its compiled reader when
        that keeps everything (a reader projected for a table is ``_fast_change``'s)."""
        fast = self._by_header.get(raw[:_HEADER])
        if fast is not None and fast.table is None:
            try:
                return fast.reader.read(raw, _HEADER)
            except Unreadable:
                pass  # fastavro reads it again, and says why
        return self._read_whole(raw, part)

    def _read_whole(self, raw: bytes, part: str) -> Any:
        """A message no compiled reader took: read by fastavro (which says what is wrong with
        it), and its schema compiled on its first message."""
        if not is_avro(raw):
            raise DecodeError(f"the {part} is not Avro: it does not start with the magic byte")
        if len(raw) < _HEADER:
            raise DecodeError(f"the {part} is cut short: no schema id after the magic byte")
        schema_id = int.from_bytes(raw[1:_HEADER], "big")
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._prepare(schema_id)
        value = reader.read(raw)
        if schema_id not in self._fast:
            fast = self._fast[schema_id] = self._compile(reader, value)
            if fast is not None:
                self._by_header[raw[:_HEADER]] = fast
        return value

    def _compile(self, reader: _Reader, first: Any) -> _Fast | None:
        """The compiled reader of a schema, from its first message read whole: of a change
        envelope, only the fields ``_change`` reads and the trigger columns of the message's
        table (other tables' messages under this schema are read whole); anything else whole."""
        origin = _source_of(first)
        table = None if origin is None else f"{origin[0]}.{origin[1]}"
        names = _envelope_names(reader.schema)
        keep: Keep | None = None
        exact = False
        if table is not None and names is not None:
            envelope, image, source = names
            columns = self._columns.get(table)
            fields = _fields_of(reader.schema, image) or ()
            exact = columns is None or tuple(f for f in fields if f in columns) == columns

            def keep(record: str, field: str) -> bool:
                if record == envelope:
                    return field in _ENVELOPE_FIELDS
                if record == source:
                    return field in _SOURCE_FIELDS
                if record == image:
                    return columns is None or field in columns
                return True
        else:
            table = origin = None
        try:
            read = compile_reader(reader.schema, keep, self._scan)
            if table is None or origin is None:
                return _Fast(read)
            return _Fast(read, table, origin[0], origin[1], exact)
        except (KeyError, TypeError, ValueError, IndexError):
            return None  # a shape the compiler does not know: fastavro reads this schema

    def _prepare(self, schema_id: int) -> _Reader:
        known_unknown = self._unknown.get(schema_id)
        if known_unknown is not None and self._clock() - known_unknown[0] < _UNKNOWN_TTL_S:
            raise known_unknown[1]
        try:
            text = self._schemas.fetch(schema_id)
        except UnknownSchemaId as exc:
            self._unknown[schema_id] = (self._clock(), exc)
            raise
        try:
            schema = _without_logical_types(json.loads(text))
            parsed = fastavro.parse_schema(schema)
        except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
            raise DecodeError(f"writer schema {schema_id} is not valid Avro: {exc}") from exc
        reader = _Reader(schema_id, schema, parsed, _converter(schema, {}, ""))
        self._readers[schema_id] = reader
        self._unknown.pop(schema_id, None)
        return reader


@dataclass(frozen=True, slots=True)
class _Fast:
    reader: CompiledReader
    # The table ("schema.table") whose trigger columns it keeps, and its source block's schema
    # and table: a message of another table is read whole. None: it keeps everything.
    table: str | None = None
    source_schema: str | None = None
    source_table: str | None = None
    # Its images come out as ``_image`` would make them (the trigger columns, all in the
    # writer schema, in the same order), so they need no second pass.
    exact_images: bool = False


_ROW_OPS = frozenset({"c", "u", "d", "r"})
# What ``AvroDecoder._change`` reads of an envelope and of its source block.
_ENVELOPE_FIELDS = frozenset({"before", "after", "op", "source"})
_SOURCE_FIELDS = frozenset({"schema", "table", "ts_ms", "lsn"})


def _source_of(value: Any) -> tuple[str, str] | None:
    """The source block's schema and table of an envelope, as read whole."""
    source = value.get("source") if isinstance(value, dict) else None
    if isinstance(source, dict):
        schema, table = source.get("schema"), source.get("table")
        if schema and table and isinstance(schema, str) and isinstance(table, str):
            return schema, table
    return None


def _envelope_names(schema: Any) -> tuple[str, str, str] | None:
    """The full names of a Debezium envelope record, its row image record (the type of both
    ``before`` and ``after``) and its source record; None for any other shape."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    envelope, space = full_name(schema, "")
    fields = {f.get("name"): f.get("type") for f in schema.get("fields", [])}
    before, after, source = fields.get("before"), fields.get("after"), fields.get("source")
    if isinstance(before, list):
        before = next((b for b in before if b != "null"), None)
    if isinstance(after, list):
        after = next((b for b in after if b != "null"), None)
    image = _type_name(before, space)
    source_name = _type_name(source, space)
    if image is None or source_name is None or _type_name(after, space) != image:
        return None
    return envelope, image, source_name


def _fields_of(schema: Any, record: str) -> tuple[str, ...] | None:
    """The field names, in order, of the record named ``record`` in ``schema``."""
    found: list[tuple[str, ...]] = []

    def walk(node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, namespace)
        elif isinstance(node, dict) and node.get("type") in ("record", "error"):
            full, space = full_name(node, namespace)
            if full == record:
                found.append(tuple(str(f["name"]) for f in node.get("fields", [])))
            for f in node.get("fields", []):
                walk(f.get("type"), space)

    walk(schema, "")
    return found[0] if found else None


def _type_name(schema: Any, namespace: str) -> str | None:
    if isinstance(schema, dict) and schema.get("type") == "record":
        return full_name(schema, namespace)[0]
    if isinstance(schema, str) and schema not in _PRIMITIVE_NAMES:
        return schema if "." in schema or not namespace else f"{namespace}.{schema}"
    return None


_PRIMITIVE_NAMES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- preparing a writer schema ---------------------------------------------------------------


def _without_logical_types(schema: Any) -> Any:
    """The schema with every ``logicalType`` removed: fastavro then reads each value as its
    underlying type, which is what JsonConverter writes for Debezium's and Connect's types."""
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    return schema


def _bytes_text(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


def _float32_text(value: Any) -> Any:
    return float32_text(value) if isinstance(value, float) else value


_PRIMITIVE_CONVERTERS: dict[str, Converter] = {"bytes": _bytes_text, "float": _float32_text}


def _converter(schema: Any, named: dict[str, Converter | None], namespace: str) -> Converter | None:
    """What turns a value of ``schema`` as fastavro reads it into JsonConverter's form; None
    where they are the same already (most fields), so most values are left alone."""
    if isinstance(schema, str):
        if schema in _PRIMITIVE_CONVERTERS:
            return _PRIMITIVE_CONVERTERS[schema]
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        return named.get(full, named.get(schema))
    if isinstance(schema, list):
        return _union(schema, named, namespace)
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind == "record" or kind == "error":
        full, space = full_name(schema, namespace)
        named[full] = None  # a recursive reference reads as unconverted
        fields = []
        for f in schema.get("fields", []):
            convert = _converter(f.get("type"), named, space)
            if convert is not None:
                fields.append((str(f["name"]), convert))
        record = _record(tuple(fields)) if fields else None
        named[full] = record
        return record
    if kind == "fixed":
        named[full_name(schema, namespace)[0]] = _bytes_text
        return _bytes_text
    if kind == "enum":
        named[full_name(schema, namespace)[0]] = None
        return None
    if kind == "array":
        item = _converter(schema.get("items"), named, namespace)
        return None if item is None else _each_item(item)
    if kind == "map":
        item = _converter(schema.get("values"), named, namespace)
        return None if item is None else _each_value(item)
    return _converter(kind, named, namespace)


def _each_item(item: Converter) -> Converter:
    return lambda values: [item(v) for v in values]


def _each_value(item: Converter) -> Converter:
    return lambda values: {k: item(v) for k, v in values.items()}


def _record(fields: tuple[tuple[str, Converter], ...]) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for name, field_converter in fields:
            found = value.get(name)
            if found is not None:
                value[name] = field_converter(found)
        return value

    return convert


def _union(
    branches: list[Any], named: dict[str, Converter | None], namespace: str
) -> Converter | None:
    """A union's value carries no branch once read; the branch is told by the value's type.
    Debezium's unions are a type and null, where that is exact."""
    converters = [(b, _converter(b, named, namespace)) for b in branches if b != "null"]
    useful = [c for _, c in converters if c is not None]
    if not useful:
        return None
    if len(converters) == 1:
        return useful[0]
    by_kind: dict[type, Converter] = {}
    for branch, branch_converter in converters:
        if branch_converter is None:
            continue
        if branch == "float" and "double" not in branches:
            by_kind.setdefault(float, branch_converter)
        elif branch_converter is _bytes_text:
            by_kind.setdefault(bytes, branch_converter)
        elif isinstance(branch, (dict, str)) and branch not in ("float", "bytes"):
            by_kind.setdefault(dict, branch_converter)
    if not by_kind:
        return None

    def convert(value: Any) -> Any:
        chosen = by_kind.get(type(value))
        return value if chosen is None else chosen(value)

    return convert
