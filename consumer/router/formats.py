"""Which decoder reads a source event: the definition's ``source.kafka.format``, or, with
``auto``, the message's first byte (Confluent's Avro starts with a zero byte, JSON never does).

The key is read by its own first byte whatever the format: a connector's key converter is set
apart from its value converter, and some deployments keep JSON or Avro keys under the other
format's values. A JSON value with an Avro key is the one mix not read (docs/avro.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from consumer.config import KafkaSource, SchemaRegistry
from consumer.errors import ConfigurationError
from consumer.router.avro import (
    MAGIC_BYTE,
    AvroDecoder,
    RegistrySchemas,
    WriterSchemas,
    is_avro,
)
from consumer.router.debezium import Change, DecodeError, EventDecoder, Ignored, decode_key

__all__ = ["SourceDecoder"]

Format = Literal["json", "avro", "auto"]


class SourceDecoder:
    """Decodes one router's (or one replay's) source events in their format; ``schemas`` are
    the Avro writer schemas (the registry), None when none is configured."""

    def __init__(
        self,
        serialization: Format = "auto",
        schemas: WriterSchemas | None = None,
        columns: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._format = serialization
        self._columns = columns
        self._json = EventDecoder(columns)
        self._avro = None if schemas is None else AvroDecoder(schemas, columns)
        self._settings: SchemaRegistry | None = None  # a registry to connect to when needed
        self._registry: RegistrySchemas | None = None  # the client this decoder made, if any

    @classmethod
    def for_source(
        cls, kafka: KafkaSource, columns: Mapping[str, Iterable[str]] | None = None
    ) -> SourceDecoder:
        """The decoder a definition's source asks for. Under ``auto`` its registry's client is
        made when the first Avro message comes: the client and what it imports take about
        16 MiB, which a source of JSON events never needs (docs/benchmarks.md, "Peak RSS").
        It is made at once for ``format: avro``, and when ``client_settings`` pass settings
        through that only the client can judge: a bad one then stops the start."""
        decoder = cls(kafka.format, None, columns)
        registry = decoder._settings = kafka.schema_registry
        if kafka.format == "avro" or (registry is not None and registry.client_settings):
            decoder._connect()
        return decoder

    def close(self) -> None:
        """Close the registry client this decoder made (schemas given in are the giver's)."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    @property
    def avro(self) -> AvroDecoder | None:
        return self._avro

    def _connect(self) -> AvroDecoder | None:
        """The Avro decoder, over a registry client made now if the definition names one."""
        if self._avro is None and self._settings is not None:
            try:
                self._registry = RegistrySchemas(self._settings)
            except (ValueError, TypeError, OSError) as exc:  # the client refused its settings
                raise ConfigurationError(
                    f"source.kafka.schema_registry: the registry client cannot be made: {exc}"
                ) from exc
            self._avro = AvroDecoder(self._registry, self._columns)
        return self._avro

    def decode(
        self, key: bytes | None, value: bytes | None, topic: str | None = None
    ) -> Change | Ignored:
        """Decode one Kafka record of ``topic``; raise DecodeError for anything malformed and
        RegistryUnavailable when a writer schema cannot be fetched now."""
        if value is None:
            return Ignored("tombstone")
        if not value.startswith(MAGIC_BYTE):  # is_avro, inline: this runs once per event
            if self._format != "avro":
                return self._json.decode(key, value, topic)
            raise DecodeError(
                "the value is not Avro (no magic byte), and source.kafka.format is avro"
            )
        if self._format == "json":
            return self._json.decode(key, value, topic)
        avro_decoder = self._avro or self._connect()
        if avro_decoder is None:
            raise DecodeError(
                "the value is Avro (magic byte), but source.kafka.schema_registry is not set"
            )
        return avro_decoder.decode(key, value, self._key)

    def _key(self, raw: bytes | None) -> dict[str, Any]:
        if raw is not None and is_avro(raw) and self._avro is not None:
            return self._avro.decode_key(raw)
        return decode_key(raw)
