"""``--format avro`` reaches every layer: the stack's options and endpoints, the environment it
exports, the CLI and the demo, and Debezium's converter settings; bad combinations are refused
before anything starts, and the JSON path stays as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from reach_devstack.debezium import DebeziumSettings, debezium_command, engine_properties
from reach_devstack.debezium import settings_from_args as debezium_settings_from_args
from reach_devstack.stack import StackEndpoints, StackOptions, stack_env
from reach_devstack.supervisor import STATE_FILE, options_from_json, options_to_json

from consumer.cli.main import main

REGISTRY_URL = "http://127.0.0.1:38081"


def _endpoints(**changes: object) -> StackEndpoints:
    fields: dict[str, object] = {
        "state_dir": "/nowhere/stack",
        "logs_dir": "/nowhere/stack/logs",
        "bootstrap_servers": "127.0.0.1:39092",
        "postgres_dsn": "postgresql://reach:pw@127.0.0.1:35432/shop",
        "redis_url": "redis://127.0.0.1:36379/0",
        "sandbox_url": "http://127.0.0.1:38080",
        "sandbox_admin_token": "admin-token",
        "reach_partner_id": "reach-sync-dev",
        "reach_jwt_secret": "jwt-secret",
        "reach_static_key": "rk_dev_key",
        "tenants": [],
        "topic_prefix": "shop",
        "debezium_tables": ["public.customers"],
        "debezium_schemas": True,
    }
    fields.update(changes)
    return StackEndpoints(**fields)  # type: ignore[arg-type]


def _debezium(tmp_path: Path, **changes: object) -> DebeziumSettings:
    fields: dict[str, object] = {
        "bootstrap_servers": "127.0.0.1:9092",
        "pg_host": "127.0.0.1",
        "pg_port": 5432,
        "pg_user": "reach",
        "pg_database": "shop",
        "topic_prefix": "shop",
        "tables": ("public.customers",),
        "state_dir": tmp_path,
    }
    fields.update(changes)
    return DebeziumSettings(**fields)  # type: ignore[arg-type]


def test_an_avro_stack_exports_its_format_and_registry_and_a_json_one_only_its_format() -> None:
    avro = stack_env(_endpoints(source_format="avro", schema_registry_url=REGISTRY_URL))
    assert avro["REACH_SYNC_SOURCE_FORMAT"] == "avro"
    assert avro["REACH_SYNC_SCHEMA_REGISTRY_URL"] == REGISTRY_URL
    plain = stack_env(_endpoints())
    assert plain["REACH_SYNC_SOURCE_FORMAT"] == "json"
    assert "REACH_SYNC_SCHEMA_REGISTRY_URL" not in plain
    # Everything else is the same either way.
    rest = {k: v for k, v in avro.items() if k != "REACH_SYNC_SCHEMA_REGISTRY_URL"}
    assert rest == {**plain, "REACH_SYNC_SOURCE_FORMAT": "avro"}


def test_endpoints_of_a_state_file_written_before_avro_read_as_json() -> None:
    old = _endpoints().to_json()
    del old["source_format"], old["schema_registry_url"]
    endpoints = StackEndpoints(**old)
    assert (endpoints.source_format, endpoints.schema_registry_url) == ("json", None)


def test_the_format_survives_the_trip_to_the_supervisor(tmp_path: Path) -> None:
    options = StackOptions(tmp_path, format="avro", registry_port=38081)
    assert options_from_json(options_to_json(options)) == options


def test_stack_options_refuse_an_unknown_format_and_avro_without_schemas(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format 'xml' is not one of json, avro"):
        StackOptions(tmp_path, format="xml")
    with pytest.raises(ValueError, match="for JSON only"):
        StackOptions(tmp_path, format="avro", debezium_schemas=False)


def test_dev_up_refuses_avro_without_schemas_before_touching_the_state_dir(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "keep.txt"
    kept.write_text("mine")
    with pytest.raises(SystemExit) as refused:
        main(["dev", "up", "--state-dir", str(tmp_path), "--format", "avro", "--no-schemas"])
    assert "--no-schemas is for --format json" in str(refused.value.code)
    assert kept.read_text() == "mine"


def test_dev_status_names_the_format_and_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoints = _endpoints(source_format="avro", schema_registry_url=REGISTRY_URL).to_json()
    state = {
        "status": "ready",
        "supervisor_pid": os.getpid(),
        "components": {"registry": "running"},
        "endpoints": endpoints,
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    main(["dev", "status", "--state-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"format: avro; schema registry at {REGISTRY_URL}" in out
    assert any(line.startswith("  registry ") for line in out.splitlines())


def test_the_demo_refuses_avro_without_schemas_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "demo"
    code = main(["demo", "--state-dir", str(state_dir), "--format", "avro", "--no-schemas"])
    assert code == 2
    assert "--no-schemas is for --format json" in capsys.readouterr().err
    assert not state_dir.exists()


def test_debezium_avro_configures_both_converters_with_the_registry(tmp_path: Path) -> None:
    settings = _debezium(tmp_path, format="avro", schema_registry_url=REGISTRY_URL)
    props = engine_properties(settings, "pw")
    assert props["key.converter.schema.registry.url"] == REGISTRY_URL
    assert props["value.converter.schema.registry.url"] == REGISTRY_URL
    assert props["schema.name.adjustment.mode"] == "avro"
    assert "key.converter.schemas.enable" not in props
    assert props["header.converter.class"].endswith("SimpleHeaderConverter")
    assert props["tombstones.on.delete"] == "true"
    argv = debezium_command(settings)
    assert argv[argv.index("--format") + 1] == "avro"
    assert debezium_settings_from_args(argv[3:]) == settings


def test_debezium_json_is_configured_as_before(tmp_path: Path) -> None:
    props = engine_properties(_debezium(tmp_path), "pw")
    assert props["key.converter.schemas.enable"] == "true"
    assert props["value.converter.schemas.enable"] == "true"
    assert not any("schema.registry.url" in key for key in props)
    assert "schema.name.adjustment.mode" not in props


def test_debezium_settings_refuse_avro_without_a_registry_and_a_registry_without_avro(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="needs a schema registry URL"):
        _debezium(tmp_path, format="avro")
    with pytest.raises(ValueError, match="for the avro format only"):
        _debezium(tmp_path, schema_registry_url=REGISTRY_URL)
    with pytest.raises(ValueError, match="--no-schemas is for JSON"):
        _debezium(tmp_path, format="avro", schema_registry_url=REGISTRY_URL, schemas=False)
    with pytest.raises(ValueError, match="not one of json, avro"):
        _debezium(tmp_path, format="protobuf")
