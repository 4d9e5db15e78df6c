"""Decoding equivalence: the same database changes through a JSON and an Avro connector give the
router the same changes, values included, and the same planned dirty keys.

Two embedded Debezium engines read one Postgres through their own replication slots: one with
Kafka Connect's JsonConverter, one with Confluent's AvroConverter against the stack's schema
registry. Both capture the shop's tables and a table of the column types whose Avro form differs
from their JSON one (numeric, real, date, time, timestamps, bytea, arrays, enums, uuid, jsonb,
interval). Every change is found in both streams by its LSN and decoded by the router's own
decoders, whole: the changes must be equal, and so must what the router plans from them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Message
from psycopg.conninfo import conninfo_to_dict
from reach_devstack.chaos.topics import read_topic as whole_topic
from reach_devstack.debezium import DebeziumSettings, debezium_command, is_ready
from reach_devstack.load import run_load
from reach_devstack.process import ManagedProcess, ProcessSpec, wait_until
from reach_devstack.stack import StackEndpoints

from consumer.config import SchemaRegistry
from consumer.config_file import load_definition
from consumer.router.avro import RegistrySchemas
from consumer.router.debezium import Change, Ignored
from consumer.router.formats import SourceDecoder
from consumer.router.triggers import TriggerIndex, plan_change
from tests.e2e.conftest import EXAMPLE, shop_env
from tests.e2e.helpers import read_topic, sql

TABLES = ("public.customers", "public.transactions", "public.avro_types")
READY_S = 120.0

TYPES_TABLE = """
DO $$ BEGIN CREATE TYPE avro_mood AS ENUM ('calm', 'busy'); EXCEPTION
    WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE IF NOT EXISTS avro_types (
    id serial PRIMARY KEY,
    amount numeric(10, 2),
    loose numeric,
    ratio real,
    share double precision,
    day date,
    at timestamp,
    at_tz timestamptz,
    clock time,
    span interval,
    blob bytea,
    tags text[],
    mood avro_mood,
    big bigint,
    small smallint,
    flag boolean,
    note text,
    doc jsonb,
    ident uuid
)
"""
ROWS = [
    (
        "INSERT INTO avro_types (amount, loose, ratio, share, day, at, at_tz, clock, span, blob,"
        " tags, mood, big, small, flag, note, doc, ident) VALUES (12.34, 3.14159, 1.1, 0.1,"
        " '2026-12-05', '2026-12-05 08:00:00.123456', '2026-12-05 08:00:00+02', '23:59:59.5',"
        " '1 day 2 hours', '\\x00ff10', '{a,b}', 'busy', 9007199254740993, -7, true, 'é ✓',"
        " '{\"k\": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')"
    ),
    "INSERT INTO avro_types (amount, ratio) VALUES (-0.01, -3.4e38)",
    "INSERT INTO avro_types (note) VALUES (NULL)",
    "UPDATE avro_types SET amount = amount * 2, ratio = 0.3, tags = '{}' WHERE amount IS NOT NULL",
    "DELETE FROM avro_types WHERE note IS NULL AND amount IS NULL",
]


@contextmanager
def _engine(endpoints: StackEndpoints, state: Path, name: str, source_format: str) -> Iterator[str]:
    """A Debezium engine of its own (own slot, publication and topic prefix); yields the prefix.
    Its slot is dropped afterwards, so the database keeps no WAL for it."""
    conn = conninfo_to_dict(endpoints.postgres_dsn)
    state.mkdir(parents=True)
    password = state / "pg-password"
    password.write_text(str(conn["password"]))
    password.chmod(0o600)
    prefix = f"eq{name}"
    settings = DebeziumSettings(
        bootstrap_servers=endpoints.bootstrap_servers,
        pg_host="127.0.0.1",
        pg_port=int(str(conn["port"])),
        pg_user=str(conn["user"]),
        pg_password_file=password,
        pg_database=str(conn["dbname"]),
        topic_prefix=prefix,
        tables=TABLES,
        state_dir=state,
        format=source_format,
        schema_registry_url=endpoints.schema_registry_url if source_format == "avro" else None,
        slot_name=f"eq_{name}",
        publication_name=f"eq_{name}",
        snapshot_mode="no_data",
    )
    process = ManagedProcess(
        ProcessSpec(f"debezium-{name}", debezium_command(settings), state / "debezium.log")
    )
    process.start()
    try:
        wait_until(process, lambda: is_ready(state), READY_S)
        yield prefix
    finally:
        process.stop()
        sql(endpoints.postgres_dsn, f"SELECT pg_drop_replication_slot('eq_{name}')")


def _decoded(
    endpoints: StackEndpoints, prefix: str, decoder: SourceDecoder
) -> dict[tuple[str, int, str], Change]:
    """Every row change now in the engine's topics, by (table, LSN, op), decoded whole."""
    found: dict[tuple[str, int, str], Change] = {}
    for table in TABLES:
        topic = f"{prefix}.{table}"
        for message in whole_topic(endpoints.bootstrap_servers, topic):
            change = decoder.decode(message.key(), message.value(), topic)
            if isinstance(change, Ignored):
                continue
            assert change.lsn is not None
            found[(change.table, change.lsn, change.op)] = change
    return found


def _wait_for_row(
    endpoints: StackEndpoints, prefix: str, decoder: SourceDecoder, note: str
) -> None:
    """Until the engine's change of the row whose note is ``note`` is in its topic."""
    topic = f"{prefix}.public.avro_types"

    def seen(messages: list[Message]) -> bool:
        for message in messages:
            change = decoder.decode(message.key(), message.value(), topic)
            if isinstance(change, Change) and (change.after or {}).get("note") == note:
                return True
        return False

    read_topic(endpoints.bootstrap_servers, topic, seen, timeout_s=READY_S)


def test_json_and_avro_connectors_give_the_router_the_same_changes_and_dirty_keys(
    shop_stack: StackEndpoints, tmp_path: Path
) -> None:
    if shop_stack.source_format != "avro":
        pytest.skip("needs the Avro stack's schema registry")
    dsn = shop_stack.postgres_dsn
    sql(dsn, TYPES_TABLE)
    name = uuid.uuid4().hex[:6]
    registry = RegistrySchemas(
        SchemaRegistry.model_validate({"url": shop_stack.schema_registry_url})
    )
    from_json, from_avro = SourceDecoder("json"), SourceDecoder("avro", registry)
    try:
        with (
            _engine(shop_stack, tmp_path / "json", f"j{name}", "json") as json_prefix,
            _engine(shop_stack, tmp_path / "avro", f"a{name}", "avro") as avro_prefix,
        ):
            for statement in ROWS:
                sql(dsn, statement)
            run_load(dsn, 40.0, 5.0, 5, progress=False)
            # The last change of all: once both engines wrote it, they wrote everything before.
            sentinel = f"sentinel-{name}"
            sql(dsn, ("INSERT INTO avro_types (note) VALUES (%s)", (sentinel,)))
            _wait_for_row(shop_stack, json_prefix, from_json, sentinel)
            _wait_for_row(shop_stack, avro_prefix, from_avro, sentinel)
            json_changes = _decoded(shop_stack, json_prefix, from_json)
            avro_changes = _decoded(shop_stack, avro_prefix, from_avro)
    finally:
        registry.close()

    assert len(json_changes) > len(ROWS), "the JSON connector captured too little"
    assert set(avro_changes) == set(json_changes)
    tables = {table for table, _, _ in json_changes}
    assert tables == set(TABLES), tables
    for at, change in json_changes.items():
        assert avro_changes[at] == change, at
    definition = load_definition(EXAMPLE, shop_env(shop_stack, "equivalence"))
    index = TriggerIndex.from_definition(definition)
    planned = 0
    for at, change in json_changes.items():
        if change.table == "public.avro_types":
            continue  # no trigger reads it
        assert plan_change(avro_changes[at], index) == plan_change(change, index), at
        planned += len(plan_change(change, index).entities)
    assert planned > 0
