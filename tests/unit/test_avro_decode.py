"""Decoding Debezium events in Confluent's Avro wire format, and telling bad Avro apart from an
unavailable registry.

The real Debezium fixture (JSON with Connect schemas) is turned into Avro the way Confluent's
AvroConverter turns a Connect schema and value into Avro (reach_devstack.connect_avro): every
event must decode to exactly what the JSON decoder gives. The e2e
suite does the same with the embedded Debezium's own AvroConverter output.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import httpx
import orjson
import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError
from reach_devstack.connect_avro import (
    avro_schema,
    avro_value,
    wire_format,
    without_logical_types,
)

from consumer.config import KafkaSource, SchemaRegistry
from consumer.config_file import load_definition
from consumer.errors import ConfigurationError, DefinitionError, Retryable
from consumer.router.avro import (
    AvroDecoder,
    RegistrySchemas,
    RegistryUnavailable,
    UnknownSchemaId,
    client_config,
    is_avro,
)
from consumer.router.avro_reader import native_scan
from consumer.router.debezium import Change, DecodeError, EventDecoder, Ignored
from consumer.router.formats import SourceDecoder
from tests.avro_readers import READERS
from tests.shop_definition import EXAMPLE, OFFLINE_ENV

FIXTURE = Path(__file__).parents[1] / "fixtures/debezium/postgres-json-with-schemas.jsonl"


class _Registry:
    """Writer schemas by id, counting fetches; ``down`` makes every fetch fail as a registry
    that cannot answer does."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.fetches: list[int] = []
        self.down = False

    def register(self, schema: Any) -> int:
        text = json.dumps(schema)
        for known, found in self.schemas.items():
            if found == text:
                return known
        schema_id = len(self.schemas) + 1
        self.schemas[schema_id] = text
        return schema_id

    def fetch(self, schema_id: int) -> str:
        self.fetches.append(schema_id)
        if self.down:
            raise RegistryUnavailable("the schema registry at http://127.0.0.1:9 is unreachable")
        if schema_id not in self.schemas:
            raise UnknownSchemaId(f"schema id {schema_id} is unknown to the registry")
        return self.schemas[schema_id]

    def encode(self, schema: Any, value: Any) -> bytes:
        parsed = fastavro.parse_schema(without_logical_types(schema))
        return wire_format(self.register(schema), parsed, value)


def _as_avro(registry: _Registry, part: Any) -> bytes | None:
    """A JsonConverter message (schema block and payload) as AvroConverter writes it."""
    if part is None:
        return None
    connect = part["schema"]
    return registry.encode(avro_schema(connect), avro_value(connect, part["payload"]))


def _fixture() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


@READERS
def test_every_real_debezium_event_decodes_from_avro_as_from_json(scan: Any) -> None:
    registry = _Registry()
    avro = AvroDecoder(registry, scan=scan)
    json_path = EventDecoder()
    rows = 0
    for record in _fixture():
        key, value = record["key"], record["value"]
        from_json = json_path.decode(
            None if key is None else orjson.dumps(key),
            None if value is None else orjson.dumps(value),
        )
        from_avro = avro.decode(_as_avro(registry, key), _as_avro(registry, value))
        assert from_avro == from_json, record["topic"]
        rows += isinstance(from_json, Change)
    assert rows >= 10
    assert avro.one_pass > 0  # the compiled reader served the rows after each schema's first
    # One fetch per schema id, however many events used it; a key is read (and its schema
    # fetched) only for a row change, so the transaction events' key schema never is.
    assert len(registry.fetches) == len(set(registry.fetches)) == len(registry.schemas) - 1


@READERS
@pytest.mark.parametrize(
    "columns",
    [("id", "email", "no_such_column"), ("email", "id"), ("id", "email")],
    ids=["a column the table lacks", "not in the writer's order", "in the writer's order"],
)
def test_only_the_trigger_columns_are_kept_as_on_the_json_path(
    scan: Any, columns: tuple[str, ...]
) -> None:
    registry = _Registry()
    by_table = {"public.customers": columns}
    avro, json_path = AvroDecoder(registry, by_table, scan=scan), EventDecoder(by_table)
    for record in _fixture():
        if record["topic"] != "shop.public.customers" or record["value"] is None:
            continue
        key, value = record["key"], record["value"]
        expected = json_path.decode(orjson.dumps(key), orjson.dumps(value))
        decoded = avro.decode(_as_avro(registry, key), _as_avro(registry, value))
        assert decoded == expected
        assert isinstance(decoded, Change) and isinstance(expected, Change)
        image = decoded.before if decoded.op == "d" else decoded.after
        assert image is not None and list(image) == list(columns)
        expected_image = expected.before if expected.op == "d" else expected.after
        assert list(image) == list(expected_image or ())  # the same order too
    assert avro.one_pass > 0


@READERS
def test_another_table_behind_a_compiled_schema_is_read_whole_and_judged_as_its_own(
    scan: Any,
) -> None:
    """A routing transform can put two tables behind one writer schema: the schema is compiled
    for the table of its first message, and another table's messages are read whole, with that
    table's columns."""
    registry = _Registry()
    columns = {"public.orders": ("id",), "public.returns": ("state",)}
    avro = AvroDecoder(registry, columns, scan=scan)
    key, value = _change_event(registry)
    assert isinstance(avro.decode(key, value), Change)  # the first: read whole, then compiled
    first = avro.decode(key, value)
    assert isinstance(first, Change) and first.after == {"id": 7} and avro.one_pass == 1
    other = registry.encode(
        _ENVELOPE,
        {
            "before": None,
            "after": _row(),
            "source": {"schema": "public", "table": "returns", "ts_ms": 5, "lsn": None},
            "op": "c",
        },
    )
    change = avro.decode(key, other)
    assert isinstance(change, Change)
    assert (change.table, change.op, change.after, change.lsn) == (
        "public.returns",
        "c",
        {"state": "open"},
        None,
    )
    assert avro.one_pass == 1


# --- values as JsonConverter writes them ----------------------------------------------------------

_ROW = {
    "type": "record",
    "name": "Value",
    "namespace": "shop.public.orders",
    "fields": [
        {"name": "id", "type": "long"},
        {
            "name": "amount",
            "type": [
                "null",
                {
                    "type": "bytes",
                    "logicalType": "decimal",
                    "scale": 2,
                    "precision": 10,
                    "connect.name": "org.apache.kafka.connect.data.Decimal",
                },
            ],
            "default": None,
        },
        {"name": "ratio", "type": ["null", "float"], "default": None},
        {"name": "share", "type": ["null", "double"], "default": None},
        {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}], "default": None},
        {
            "name": "at",
            "type": ["null", {"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"}],
            "default": None,
        },
        {"name": "tags", "type": ["null", {"type": "array", "items": "bytes"}], "default": None},
        {"name": "blob", "type": ["null", "bytes"], "default": None},
        {
            "name": "state",
            "type": {"type": "enum", "name": "State", "symbols": ["open", "done"]},
        },
    ],
}
_SOURCE = {
    "type": "record",
    "name": "Source",
    "namespace": "io.debezium.connector.postgresql",
    "fields": [
        {"name": "schema", "type": "string"},
        {"name": "table", "type": "string"},
        {"name": "ts_ms", "type": "long"},
        {"name": "lsn", "type": ["null", "long"], "default": None},
    ],
}
_ENVELOPE = {
    "type": "record",
    "name": "Envelope",
    "namespace": "shop.public.orders",
    "fields": [
        {"name": "before", "type": ["null", _ROW], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {"name": "source", "type": _SOURCE},
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ],
}
_KEY = {
    "type": "record",
    "name": "Key",
    "namespace": "shop.public.orders",
    "fields": [{"name": "id", "type": "long"}],
}


def _row(**changes: Any) -> dict[str, Any]:
    row = {
        "id": 7,
        "amount": (1234).to_bytes(2, "big", signed=True),
        "ratio": struct.unpack("<f", struct.pack("<f", 1.1))[0],
        "share": 0.1,
        "day": 20_000,
        "at": 1_700_000_000_123_456,
        "tags": [b"\x01\x02"],
        "blob": b"__debezium_unavailable_value",
        "state": "open",
    }
    return {**row, **changes}


def _change_event(registry: _Registry, op: str = "u", **row: Any) -> tuple[bytes, bytes]:
    source = {"schema": "public", "table": "orders", "ts_ms": 1_700_000_000_000, "lsn": 99}
    value = {"before": None, "after": _row(**row), "source": source, "op": op, "ts_ms": 1}
    return registry.encode(_KEY, {"id": 7}), registry.encode(_ENVELOPE, value)


def test_values_come_out_as_jsonconverter_writes_them() -> None:
    registry = _Registry()
    change = AvroDecoder(registry).decode(*_change_event(registry))
    assert isinstance(change, Change)
    assert (change.table, change.op, change.key) == ("public.orders", "u", {"id": 7})
    assert (change.source_ts_ms, change.lsn, change.before) == (1_700_000_000_000, 99, None)
    assert change.after == {
        "id": 7,
        # Connect's Decimal: JsonConverter's base64 of the unscaled bytes, not Decimal("12.34").
        "amount": base64.b64encode((1234).to_bytes(2, "big", signed=True)).decode(),
        "ratio": 1.1,  # the 32-bit float as Java prints it, not 1.100000023841858
        "share": 0.1,
        "day": 20_000,  # a date is days since the epoch in JSON too, not datetime.date
        "at": 1_700_000_000_123_456,
        "tags": ["AQI="],
        "blob": base64.b64encode(b"__debezium_unavailable_value").decode(),
        "state": "open",
    }
    assert not any(isinstance(v, Decimal) for v in change.after.values())


def test_a_new_schema_id_mid_stream_is_fetched_once_and_needs_no_restart() -> None:
    registry = _Registry()
    decoder = AvroDecoder(registry)
    for _ in range(3):
        assert isinstance(decoder.decode(*_change_event(registry)), Change)
    grown = json.loads(json.dumps(_ENVELOPE))
    grown["fields"][0]["type"][1]["fields"].append(
        {"name": "note", "type": ["null", "string"], "default": None}
    )
    value = {
        "before": None,
        "after": {**_row(), "note": "gift"},
        "source": {"schema": "public", "table": "orders", "ts_ms": 5, "lsn": None},
        "op": "c",
        "ts_ms": None,
    }
    key = registry.encode(_KEY, {"id": 7})
    for _ in range(2):
        change = decoder.decode(key, registry.encode(grown, value))
        assert isinstance(change, Change) and change.after is not None
        assert change.after["note"] == "gift"
    assert sorted(registry.fetches) == [1, 2, 3] and decoder.schema_ids == 3


def test_tombstones_heartbeats_and_transaction_events_trigger_nothing() -> None:
    registry = _Registry()
    decoder = AvroDecoder(registry)
    key = registry.encode(_KEY, {"id": 7})
    assert decoder.decode(key, None) == Ignored("tombstone")
    heartbeat = {
        "type": "record",
        "name": "Heartbeat",
        "fields": [{"name": "ts_ms", "type": "long"}],
    }
    assert decoder.decode(None, registry.encode(heartbeat, {"ts_ms": 1})) == Ignored("heartbeat")
    begin = {
        "type": "record",
        "name": "TransactionMetadataValue",
        "fields": [{"name": "status", "type": "string"}, {"name": "id", "type": "string"}],
    }
    transaction = registry.encode(begin, {"status": "BEGIN", "id": "1:2"})
    assert decoder.decode(None, transaction) == Ignored("transaction-metadata")
    truncate = _change_event(registry, op="t")
    assert decoder.decode(*truncate) == Ignored("truncate")


# --- bad input, and the registry ------------------------------------------------------------------


def test_an_unknown_schema_id_is_the_events_fault_and_is_asked_again_only_after_a_while() -> None:
    registry = _Registry()
    now = [1000.0]
    decoder = AvroDecoder(registry, clock=lambda: now[0])
    value = b"\x00\x00\x00\x00\x2a" + b"\x02"
    for _ in range(3):
        with pytest.raises(UnknownSchemaId, match="schema id 42 is unknown"):
            decoder.decode(None, value)
    assert registry.fetches == [42]
    now[0] += 31
    with pytest.raises(DecodeError):
        decoder.decode(None, value)
    assert registry.fetches == [42, 42]
    assert not issubclass(UnknownSchemaId, Retryable)


def test_an_unavailable_registry_is_retryable_and_nothing_is_remembered_of_it() -> None:
    registry = _Registry()
    key, value = _change_event(registry)
    registry.down = True
    decoder = AvroDecoder(registry)
    for _ in range(2):
        with pytest.raises(RegistryUnavailable, match="unreachable"):
            decoder.decode(key, value)
    assert isinstance(RegistryUnavailable("x"), Retryable)
    registry.down = False
    assert isinstance(decoder.decode(key, value), Change)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda raw: raw[:-3], "does not match its writer schema 2"),
        (lambda raw: raw + b"\x00\x01", "2 bytes left over"),
        (lambda raw: raw[:3], "cut short: no schema id"),
        (lambda raw: b'{"op": "c"}', "not Avro"),
    ],
    ids=["truncated", "trailing bytes", "no schema id", "json on an avro path"],
)
def test_a_payload_that_does_not_match_its_writer_schema_is_refused(
    mangle: Any, reason: str
) -> None:
    registry = _Registry()
    key, value = _change_event(registry)
    with pytest.raises(DecodeError, match=reason):
        AvroDecoder(registry).decode(key, mangle(value))


@pytest.mark.parametrize("text", ['{"type": "no such type"}', "not json", '{"fields": []}'])
def test_a_writer_schema_that_is_not_avro_is_refused_with_its_id(text: str) -> None:
    registry = _Registry()
    registry.schemas[1] = text
    with pytest.raises(DecodeError, match="writer schema 1 is not valid Avro"):
        AvroDecoder(registry).decode(None, b"\x00\x00\x00\x00\x01\x00")


def test_the_format_decides_which_decoder_reads_a_value() -> None:
    registry = _Registry()
    key, value = _change_event(registry)
    record = next(r for r in _fixture() if r["topic"] == "shop.public.customers")
    json_key, json_value = orjson.dumps(record["key"]), orjson.dumps(record["value"])
    auto = SourceDecoder("auto", registry)
    assert isinstance(auto.decode(key, value), Change)
    assert isinstance(auto.decode(json_key, json_value), Change)
    with pytest.raises(DecodeError, match=r"not Avro \(no magic byte\)"):
        SourceDecoder("avro", registry).decode(json_key, json_value)
    with pytest.raises(DecodeError, match="schema_registry is not set"):
        SourceDecoder("auto", None).decode(key, value)
    with pytest.raises(DecodeError, match="not a Debezium envelope"):
        SourceDecoder("json", registry).decode(key, value)
    # An Avro value with a JSON key: the key is read by its own first byte.
    change = SourceDecoder("avro", registry).decode(b'{"id": 7}', value)
    assert isinstance(change, Change) and change.key == {"id": 7}
    assert is_avro(value) and not is_avro(json_value) and not is_avro(b"")


# --- the registry client's errors, classified ----------------------------------------------------


class _Schema:
    def __init__(self, text: str, kind: str | None = None, refs: list[Any] | None = None) -> None:
        self.schema_str, self.schema_type, self.references = text, kind, refs or []


class _Client:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def get_schema(self, schema_id: int) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


_SETTINGS = SchemaRegistry.model_validate({"url": "http://127.0.0.1:9"})


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        (SchemaRegistryError(404, 40403, "Schema not found"), UnknownSchemaId, "unknown"),
        (SchemaRegistryError(500, 50001, "oops"), RegistryUnavailable, "answered 500"),
        (SchemaRegistryError(429, 42901, "slow down"), RegistryUnavailable, "answered 429"),
        (SchemaRegistryError(401, 40101, "no"), RegistryUnavailable, "refused"),
        (httpx.ConnectError("refused"), RegistryUnavailable, "unreachable: ConnectError"),
        # The client may be installed with httpx2, whose errors are not httpx's.
        (type("ReadTimeout", (Exception,), {})(), RegistryUnavailable, "unreachable: ReadTimeout"),
        (_Schema("{}", "PROTOBUF"), DecodeError, "is PROTOBUF, not Avro"),
        (_Schema('"int"', None, [object()]), DecodeError, "references"),
    ],
    ids=["404", "500", "429", "401", "connect", "another client's", "protobuf", "references"],
)
def test_registry_answers_are_classified_once(answer: Any, error: type, reason: str) -> None:
    schemas = RegistrySchemas(_SETTINGS, client=_Client(answer))
    with pytest.raises(error, match=reason):
        schemas.fetch(3)
    assert RegistrySchemas(_SETTINGS, client=_Client(_Schema('"int"'))).fetch(3) == '"int"'


def test_the_client_is_configured_from_the_definition_without_its_own_retries() -> None:
    settings = SchemaRegistry.model_validate(
        {
            "url": "https://127.0.0.1:8081",
            "basic_auth_user_info": "user:secret",
            "ssl_ca_location": "/etc/ca.pem",
            "client_settings": {"ssl.endpoint.identification.algorithm": "https"},
        }
    )
    config = client_config(settings)
    assert config["max.retries"] == 0 and config["timeout"] == 10.0
    assert config["basic.auth.credentials.source"] == "USER_INFO"
    assert config["basic.auth.user.info"] == "user:secret"
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert "secret" not in repr(settings)
    with pytest.raises(ValueError, match="not in the url"):
        SchemaRegistry.model_validate({"url": "https://reach:s3cret@127.0.0.1:8081"})
    with pytest.raises(ValueError, match="through the named fields"):
        SchemaRegistry.model_validate(
            {"url": "http://127.0.0.1:9", "client_settings": {"url": "http://x"}}
        )


def test_the_registry_credentials_are_a_secret_of_the_definition_file(tmp_path: Path) -> None:
    definition = tmp_path / "sync.yaml"
    text = EXAMPLE.read_text()
    text = text.replace("format: ${REACH_SYNC_SOURCE_FORMAT:-auto}", "format: avro").replace(
        "      url: ${REACH_SYNC_SCHEMA_REGISTRY_URL:-http://127.0.0.1:8081}\n",
        "      url: http://127.0.0.1:8081\n      basic_auth_user_info_env: REGISTRY_USER_INFO\n",
    )
    definition.write_text(text)
    env = {**OFFLINE_ENV, "REGISTRY_USER_INFO": "reach:s3cret"}
    kafka = load_definition(definition, env).source.kafka
    assert kafka.format == "avro" and kafka.schema_registry is not None
    user_info = kafka.schema_registry.basic_auth_user_info
    assert user_info is not None and user_info.get_secret_value() == "reach:s3cret"
    definition.write_text(
        text.replace(
            "basic_auth_user_info_env: REGISTRY_USER_INFO", "basic_auth_user_info: reach:s3cret"
        )
    )
    with pytest.raises(DefinitionError, match="secrets are not allowed in the file"):
        load_definition(definition, env)
    definition.write_text(text.replace("      url: http://127.0.0.1:8081\n", ""))
    with pytest.raises(DefinitionError, match=r"schema_registry\.url"):
        load_definition(definition, env)


def _kafka_source(**fields: Any) -> KafkaSource:
    """A source on a port nothing answers on, with ``fields`` (format, schema_registry)."""
    return KafkaSource.model_validate(
        {"bootstrap_servers": "127.0.0.1:9", "group_id": "g", "topics": ["t"], **fields}
    )


def test_a_decoder_closes_the_registry_client_it_made_and_only_that() -> None:
    kafka = _kafka_source(format="avro", schema_registry={"url": "http://127.0.0.1:9"})
    decoder = SourceDecoder.for_source(kafka)
    assert decoder.avro is not None
    decoder.close()
    decoder.close()  # once is enough; again is harmless
    given = _Registry()
    SourceDecoder("avro", given).close()  # schemas given in are the giver's: nothing to close
    with pytest.raises(ValueError, match="format avro needs schema_registry"):
        _kafka_source(format="avro")


def test_client_settings_the_registry_client_refuses_stop_the_start_under_auto_too() -> None:
    kafka = _kafka_source(
        format="auto",
        schema_registry={"url": "http://127.0.0.1:9", "client_settings": {"no.such.setting": "x"}},
    )
    with pytest.raises(ConfigurationError, match=r"schema_registry.*no\.such\.setting"):
        SourceDecoder.for_source(kafka)


@READERS
def test_an_after_image_of_another_record_type_is_still_cut_to_the_trigger_columns(
    scan: Any,
) -> None:
    """Debezium gives ``before`` and ``after`` one record type; a schema that does not is read
    without the one-step path, and both images are still cut to the trigger columns."""
    row = {
        "type": "record",
        "name": "Before",
        "namespace": "shop.public.items",
        "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
    }
    envelope = {
        "type": "record",
        "name": "Envelope",
        "namespace": "shop.public.items",
        "fields": [
            {"name": "before", "type": ["null", row]},
            {"name": "after", "type": ["null", {**row, "name": "After"}]},
            {"name": "source", "type": _SOURCE},
            {"name": "op", "type": "string"},
        ],
    }
    registry = _Registry()
    avro = AvroDecoder(registry, {"public.items": ("id",)}, scan=scan)
    source = {"schema": "public", "table": "items", "ts_ms": 1, "lsn": 2}
    image = {"id": 3, "name": "lamp"}
    value = registry.encode(
        envelope, {"before": image, "after": image, "source": source, "op": "u"}
    )
    key = registry.encode(_KEY, {"id": 3})
    for _ in range(3):
        change = avro.decode(key, value)
        assert isinstance(change, Change)
        assert (change.before, change.after) == ({"id": 3}, {"id": 3})


def test_an_install_without_the_c_extension_says_so_once_per_decoder(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("consumer.router.avro.native_scan", None)
    with caplog.at_level(logging.WARNING, logger="consumer.router.avro"):
        AvroDecoder(_Registry(), scan=None)
    assert [r.getMessage() for r in caplog.records] == [
        "Avro events are read by the generated Python reader: reach-sync was installed without "
        "its C extension (no C compiler at install), which reads them about four times faster "
        "(docs/avro.md)"
    ]
    monkeypatch.undo()
    if native_scan is None:
        return  # this install has no extension: every decoder says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="consumer.router.avro"):
        AvroDecoder(_Registry(), scan=None)  # the extension built, Python chosen: no warning
    assert caplog.records == []
