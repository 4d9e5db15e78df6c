"""Kafka Connect data as Confluent's AvroConverter writes it, for tests and benchmarks.

The embedded Debezium produces real AvroConverter output (debezium.py, ``--format avro``); this
module makes the same bytes from a JsonConverter message (schema block and payload), so that a
recorded JSON fixture or a generated JSON change stream can be had in Avro too, event for event.
It follows Confluent's AvroData for the types Debezium's Postgres connector emits: a struct is a
record named by its Connect name, an optional field a union with null first and a null default,
int8/16/32 ``int``, int64 ``long``, float32 ``float``, float64 ``double``, Decimal ``bytes`` with
the ``decimal`` logical type, Date ``int``/``date``, Timestamp ``long``/``timestamp-millis``,
other named types (``io.debezium.time.*``) their primitive with ``connect.name``.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Mapping
from typing import Any

import fastavro

__all__ = ["avro_schema", "avro_value", "wire_format", "without_logical_types"]

_PRIMITIVES = {
    "int8": "int",
    "int16": "int",
    "int32": "int",
    "int64": "long",
    "float32": "float",
    "float64": "double",
    "boolean": "boolean",
    "string": "string",
    "bytes": "bytes",
}


def avro_schema(connect: Mapping[str, Any]) -> Any:
    """The Avro schema AvroConverter registers for a Connect schema (JsonConverter's block)."""
    schema = _schema(connect, set())
    return schema[1] if isinstance(schema, list) else schema  # the top level is not a union


def _schema(connect: Mapping[str, Any], seen: set[str]) -> Any:
    kind, name = connect["type"], connect.get("name")
    schema: Any
    if kind == "struct":
        full = name or "ConnectDefault"
        if full in seen:
            schema = full
        else:
            seen.add(full)
            namespace, _, short = full.rpartition(".")
            fields = []
            for f in connect["fields"]:
                field: dict[str, Any] = {"name": f["field"], "type": _schema(f, seen)}
                if f.get("optional"):
                    field["default"] = None
                fields.append(field)
            schema = {"type": "record", "name": short, "fields": fields}
            if namespace:
                schema["namespace"] = namespace
    elif kind == "array":
        schema = {"type": "array", "items": _schema(connect["items"], seen)}
    elif kind == "map":
        schema = {"type": "map", "values": _schema(connect["values"], seen)}
    elif name == "org.apache.kafka.connect.data.Decimal":
        scale = int(connect.get("parameters", {}).get("scale", 0))
        schema = {"type": "bytes", "logicalType": "decimal", "scale": scale, "precision": 64}
    elif name == "org.apache.kafka.connect.data.Date":
        schema = {"type": "int", "logicalType": "date", "connect.name": name}
    elif name == "org.apache.kafka.connect.data.Timestamp":
        schema = {"type": "long", "logicalType": "timestamp-millis", "connect.name": name}
    else:
        schema = {"type": _PRIMITIVES[kind]}
        if name:
            schema["connect.name"] = name
    return ["null", schema] if connect.get("optional") else schema


def avro_value(connect: Mapping[str, Any], value: Any) -> Any:
    """A JsonConverter payload value as the Avro value AvroConverter writes: bytes decoded from
    JsonConverter's base64, float32 as the 32-bit float Java holds."""
    if value is None:
        return None
    kind = connect["type"]
    if kind == "struct":
        return {f["field"]: avro_value(f, value.get(f["field"])) for f in connect["fields"]}
    if kind == "array":
        return [avro_value(connect["items"], v) for v in value]
    if kind == "map":
        return {k: avro_value(connect["values"], v) for k, v in value.items()}
    if kind == "bytes":
        return base64.b64decode(value)
    if kind == "float32":
        return struct.unpack("<f", struct.pack("<f", value))[0]
    return value


def without_logical_types(schema: Any) -> Any:
    """The schema with its logical types removed: the wire bytes of a value are the same, and
    fastavro then writes the underlying type from the values ``avro_value`` gives."""
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [without_logical_types(s) for s in schema]
    return schema


def wire_format(schema_id: int, parsed: Any, value: Any) -> bytes:
    """Confluent's wire format: the magic byte, the schema id (4 bytes, big endian), then the
    value in Avro binary. ``parsed`` is ``fastavro.parse_schema(without_logical_types(...))``."""
    out = io.BytesIO()
    out.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(out, parsed, value)
    return out.getvalue()
