"""The schema registry double as a real process, driven by Confluent's Python client: what
reach-sync will do against it (register, fetch by id, look up, versions, latest; serialize and
deserialize Avro in the wire format), its errors as the client sees them, and ids that survive a
restart of the process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import fastavro
import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from reach_devstack.process import ManagedProcess, free_port, wait_until
from reach_devstack.registry import registry_ready, registry_spec

READY_TIMEOUT_S = 30.0
CUSTOMER = {
    "type": "record",
    "name": "Customer",
    "namespace": "shop",
    "fields": [{"name": "id", "type": "long"}, {"name": "email", "type": "string"}],
}


class _Registry:
    """A registry process on a free loopback port, keeping its schemas in ``state_dir``."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(registry_spec(self.port, state_dir, state_dir / "logs"))

    def start(self) -> _Registry:
        self.process.start()
        wait_until(self.process, lambda: registry_ready(self.url), READY_TIMEOUT_S)
        return self

    def client(self) -> SchemaRegistryClient:
        """A fresh client: nothing cached, so every answer comes from the server."""
        return SchemaRegistryClient({"url": self.url})


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Registry]:
    running = _Registry(tmp_path_factory.mktemp("registry")).start()
    yield running
    running.process.stop()


def _schema(**changes: object) -> Schema:
    return Schema(json.dumps({**CUSTOMER, **changes}), "AVRO")


def test_the_python_client_registers_fetches_looks_up_and_lists(
    registry: _Registry, unique: Callable[[str], str]
) -> None:
    subject = unique("customers") + "-value"
    with registry.client() as writer:
        first = writer.register_schema(subject, _schema())
        again = writer.register_schema(subject, _schema())
        second = writer.register_schema(subject, _schema(doc="with a doc"))
    assert again == first and second > first

    # A second client has nothing cached: every answer below comes from the server.
    with registry.client() as reader:
        fetched = reader.get_schema(first, subject_name=subject)
        assert json.loads(fetched.schema_str or "") == CUSTOMER
        assert fetched.schema_type == "AVRO"
        found = reader.lookup_schema(subject, _schema())
        assert (found.schema_id, found.version, found.subject) == (first, 1, subject)
        assert reader.get_versions(subject) == [1, 2]
        latest = reader.get_latest_version(subject)
        assert (latest.schema_id, latest.version) == (second, 2)
        assert reader.get_version(subject, 1).schema_id == first
        assert subject in reader.get_subjects()
        usages = reader.get_schema_versions(second)
        assert [(u.subject, u.version) for u in usages] == [(subject, 2)]


def test_avro_written_by_the_serializer_reads_back_through_the_registry(
    registry: _Registry, unique: Callable[[str], str]
) -> None:
    topic = unique("topic")
    context = SerializationContext(topic, MessageField.VALUE)
    with registry.client() as writer:
        data = AvroSerializer(writer, json.dumps(CUSTOMER))(
            {"id": 7, "email": "a@example.com"}, context
        )
    assert data is not None
    assert data[0] == 0  # the Confluent wire format: magic byte, schema id, Avro binary
    schema_id = int.from_bytes(data[1:5], "big")

    with registry.client() as reader:
        assert reader.get_latest_version(f"{topic}-value").schema_id == schema_id
        assert AvroDeserializer(reader)(data, context) == {"id": 7, "email": "a@example.com"}
    writer_schema = httpx.get(f"{registry.url}/schemas/ids/{schema_id}").json()["schema"]
    parsed = fastavro.parse_schema(json.loads(writer_schema))
    record = fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed)
    assert record == {"id": 7, "email": "a@example.com"}


def test_the_client_sees_confluents_error_codes(
    registry: _Registry, unique: Callable[[str], str]
) -> None:
    with registry.client() as client:
        with pytest.raises(SchemaRegistryError) as unknown_id:
            client.get_schema(10_000)
        assert (unknown_id.value.http_status_code, unknown_id.value.error_code) == (404, 40403)
        not_avro = Schema('{"type": "record", "name": "R"}', "AVRO")
        with pytest.raises(SchemaRegistryError) as invalid:
            client.register_schema(unique("bad"), not_avro)
        assert (invalid.value.http_status_code, invalid.value.error_code) == (422, 42201)
        with pytest.raises(SchemaRegistryError) as no_subject:
            client.get_latest_version(unique("missing"))
        assert no_subject.value.error_code == 40401


def test_compatibility_settings_are_answered(
    registry: _Registry, unique: Callable[[str], str]
) -> None:
    subject = unique("compat")
    with registry.client() as client:
        client.register_schema(subject, _schema())
        client.set_compatibility(subject, "NONE")
        assert client.get_compatibility(subject) == "NONE"
        assert client.get_compatibility() == "BACKWARD"


def test_a_restarted_registry_serves_the_ids_it_issued(tmp_path: Path) -> None:
    first = _Registry(tmp_path).start()
    with first.client() as client:
        schema_id = client.register_schema("kept-value", _schema())
    first.process.stop()
    assert first.process.exit_code() == 0  # SIGTERM is a clean stop

    second = _Registry(tmp_path, port=first.port).start()
    try:
        with second.client() as client:
            fetched = client.get_schema(schema_id)
            assert json.loads(fetched.schema_str or "") == CUSTOMER
            assert client.register_schema("kept-value", _schema()) == schema_id
            other = client.register_schema("other-value", _schema(name="Other"))
        assert other == schema_id + 1
    finally:
        second.process.stop()


def test_the_registry_listens_on_loopback_only(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "reach_devstack.registry", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == "registry: --host 0.0.0.0 is not a loopback address"
