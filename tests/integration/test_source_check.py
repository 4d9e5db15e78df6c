"""The definition checked against a real source database (consumer/source_check.py): each
mistake that YAML validation cannot see is named by ``validate --source`` with its file, line and
path, all at once, and ``run`` refuses to start on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from reach_devstack.postgres import PostgresConfig
from reach_devstack.shop import seed

from consumer.cli.main import main
from consumer.config import SyncDefinition
from consumer.service import ServiceStats
from tests.shop_definition import EXAMPLE, OFFLINE_ENV

GOOD = """\
version: 1
source:
  kafka: {bootstrap_servers: "127.0.0.1:1", group_id: check, topics: [unused]}
  database: {dsn_env: DATABASE_URL}
resources:
  customers:
    reach_schema: customers
    key: id
    tenant: tenant
    triggers:
      - {table: public.customers, id: id}
      - {table: public.orders, id: customer_id, replica_identity: full}
    query: |
      SELECT c.id, c.tenant, c.email, c.created_at, c.vip, c.balance,
             (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) AS orders
        FROM customers c WHERE c.id = ANY(%(ids)s::bigint[])
    mapping:
      customerId: {column: id, format: string}
      email: {column: email, pii: send}
      createdAt: {column: created_at, format: datetime}
      vip: {column: vip, format: boolean}
      orders: {column: orders, format: integer}
      balance: {column: balance, format: raw}
    backfill:
      ids_query: SELECT id FROM customers WHERE %(after)s::bigint IS NULL OR id > %(after)s::bigint
        ORDER BY id LIMIT %(limit)s
      since_column: created_at
    groups:
      field: segments
      rules:
        - {name: buyer, when: orders > 0}
  orders:
    reach_schema: orders
    key: id
    tenant: tenant
    triggers:
      - {table: public.orders, id: id}
      - table: public.customers
        id: id
        lookup: SELECT id FROM orders WHERE customer_id = ANY(%(ids)s::bigint[])
    query: |
      SELECT o.id, c.tenant, o.total FROM orders o JOIN customers c ON c.id = o.customer_id
       WHERE o.id = ANY(%(ids)s::bigint[])
    mapping:
      orderId: {column: id, format: string}
      total: {column: total, format: decimal_cents}
    delivery: {mode: realtime}
    tenants_query: SELECT DISTINCT tenant FROM customers
destination:
  base_url: "http://127.0.0.1:1"
  auth: {mode: jwt, partner_id: p, secret_env: JWT_SECRET}
redis: {url_env: REDIS_URL, key_prefix: check}
topics: {dirty: c.dirty, dead_letter: c.dead-letter}
"""
GOOD = GOOD.replace(
    "        - {name: buyer, when: orders > 0}\n",
    "        - {name: buyer, when: orders > 0}\n    delivery: {mode: batch}\n",
)

# Each mistake: (what to replace in GOOD, with what, the line and path it must be named at, and
# words of the reason).
MISTAKES = [
    (
        "{table: public.orders, id: customer_id,",
        "{table: public.orders, id: customer_idd,",
        "resources.customers.triggers[1].id",
        "public.orders has no column customer_idd",
    ),
    (
        "createdAt: {column: created_at,",
        "createdAt: {column: created_att,",
        "resources.customers.mapping.createdAt.column",
        "no column created_att",
    ),
    (
        "- {table: public.customers, id: id}\n",
        "- {table: public.customerz, id: id}\n",
        "resources.customers.triggers[0].table",
        "no table public.customerz",
    ),
    (
        "vip: {column: vip, format: boolean}",
        "vip: {column: email, format: boolean}",
        "resources.customers.mapping.vip.column",
        "format boolean cannot read email, a text",
    ),
    (
        "createdAt: {column: created_at, format: datetime}",
        "createdAt: {column: orders, format: datetime}",
        "resources.customers.mapping.createdAt.column",
        "format datetime cannot read orders",
    ),
    (
        "total: {column: total, format: decimal_cents}",
        "total: {column: tenant, format: decimal_cents}",
        "resources.orders.mapping.total.column",
        "format decimal_cents cannot read tenant",
    ),
    (
        "when: orders > 0",
        "when: order_count > 0",
        "resources.customers.groups.rules[0].when",
        'column "order_count" does not exist',
    ),
    (
        "    key: id\n    tenant: tenant\n    triggers:\n      - {table: public.customers",
        "    key: customer_id\n    tenant: tenant\n    triggers:\n      - {table: public.customers",
        "resources.customers.key",
        "no column customer_id",
    ),
    (
        "SELECT o.id, c.tenant, o.total",
        "SELECT o.id, c.tenant AS merchant, o.total",
        "resources.orders.tenant",
        "no column tenant",
        "    tenant: tenant\n    triggers:\n      - {table: public.orders",
    ),
    (
        "FROM customers c WHERE",
        "FROM customers c WHER",
        "resources.customers.query",
        "the query fails",
        "    query: |",
    ),
    (
        "SELECT id FROM orders WHERE customer_id",
        "SELECT id FROM orderz WHERE customer_id",
        "resources.orders.triggers[1].lookup",
        'relation "orderz" does not exist',
    ),
    (
        "- {table: public.orders, id: id}",
        "- {table: public.orders, id: customer_id}",
        "resources.orders.triggers[0].replica_identity",
        "declared full by",
    ),
    # The catalog: a trigger relying on before images the table does not give.
    (
        "{table: public.orders, id: customer_id, replica_identity: full}",
        "{table: public.addresses, id: customer_id, replica_identity: full}",
        "resources.customers.triggers[1].replica_identity",
        "REPLICA IDENTITY DEFAULT: the before images of its updates and deletes do not hold "
        "customer_id, so the entity a row leaves is never made dirty; run ALTER TABLE "
        "public.addresses REPLICA IDENTITY FULL",
    ),
    # The queries, run on no rows: their columns, types and conditions.
    (
        "WHERE c.id = ANY(%(ids)s::bigint[])",
        "WHERE c.id = ANY(%(ids)s::bigint[]) OR c.vip",
        "resources.customers.query",
        "run with no ids, the query returns rows: it does not keep to the ids it is given",
        "    query: |",
    ),
    (
        "c.created_at, c.vip",
        "c.created_at::time AS created_at, c.vip",
        "resources.customers.mapping.createdAt.column",
        "format datetime cannot read created_at, a time without time zone: it holds no day",
        "createdAt: {column: created_at",
    ),
    (
        "balance: {column: balance, format: raw}",
        "balance: {column: balance, format: integer}",
        "resources.customers.mapping.balance.column",
        "format integer cannot read balance, a numeric(12,2): it holds fractions, which integer "
        "refuses; use format decimal",
    ),
    (
        "balance: {column: balance, format: raw}",
        "balance: {column: balance, format: decimal_cents}",
        "resources.customers.mapping.balance.column",
        "format decimal_cents reads whole cents, and balance is a numeric(12,2), an amount with "
        "fractions: use format decimal",
    ),
    (
        "vip: {column: vip, format: boolean}",
        "vip: {column: balance, format: boolean}",
        "resources.customers.mapping.vip.column",
        "boolean reads a boolean or an integer 0 or 1",
    ),
    (
        "SELECT c.id, c.tenant,",
        "SELECT c.id, c.settings->'tenant' AS tenant,",
        "resources.customers.tenant",
        "tenant is a jsonb, which cannot be an id (an integer, text or uuid); take the text out "
        "of it with ->> rather than ->",
        "    tenant: tenant\n    triggers:\n      - {table: public.customers",
    ),
    (
        "SELECT o.id, c.tenant, o.total FROM",
        "SELECT o.id, c.tenant, o.total, c.id FROM",
        "resources.orders.query",
        "the query returns 2 columns named id: recompute reads the last one alone",
        "    query: |\n      SELECT o.id",
    ),
    (
        "when: orders > 0",
        "when: orders",
        "resources.customers.groups.rules[0].when",
        "the rule is a bigint, not a condition: write one that is true or false, e.g. orders > 0",
    ),
    (
        "SELECT id FROM orders WHERE customer_id",
        "SELECT * FROM orders WHERE customer_id",
        "resources.orders.triggers[1].lookup",
        "the lookup returns 3 columns (id, customer_id, total): it must return the entity ids "
        "alone",
    ),
    (
        "ids_query: SELECT id FROM customers",
        "ids_query: SELECT id, tenant FROM customers",
        "resources.customers.backfill.ids_query",
        "the ids_query returns 2 columns (id, tenant)",
    ),
    (
        "ids_query: SELECT id FROM customers",
        "ids_query: SELECT id FROM customer",
        "resources.customers.backfill.ids_query",
        'the ids_query fails: relation "customer" does not exist',
    ),
    (
        "since_column: created_at",
        "since_column: email",
        "resources.customers.backfill.since_column",
        "email is a text, and --since compares it with a moment",
    ),
    (
        "since_column: created_at",
        "since_column: updated_at",
        "resources.customers.backfill.since_column",
        "the query returns no column updated_at",
    ),
    (
        "tenants_query: SELECT DISTINCT tenant FROM customers",
        "tenants_query: SELECT DISTINCT tenant FROM customerz",
        "resources.orders.tenants_query",
        'the tenants_query fails: relation "customerz" does not exist',
    ),
    # The query run with ids sampled from the data: what only rows show.
    (
        "FROM customers c WHERE c.id",
        "FROM customers c JOIN orders o2 ON o2.customer_id = c.id WHERE c.id",
        "resources.customers.query",
        "the query returned 2 rows for id 5000000001 (of 3 sampled from backfill.ids_query): a "
        "join fans out",
        "    query: |",
    ),
    (
        "SELECT o.id, c.tenant, o.total",
        "SELECT o.customer_id AS id, c.tenant, o.total",
        "resources.orders.key",
        "asked for 3 ids sampled from public.orders, the query returned id 5000000001 (and 1 "
        "more), not one of them: key id names the wrong column",
        "    key: id\n    tenant: tenant\n    triggers:\n      - {table: public.orders",
    ),
    (
        "FROM orders o JOIN customers c ON c.id = o.customer_id",
        "FROM orders o LEFT JOIN customers c ON c.id = o.id",
        "resources.orders.tenant",
        "tenant column tenant is null in every row returned for the 3 ids sampled from "
        "public.orders: it names the wrong column, or its join finds nothing",
        "    tenant: tenant\n    triggers:\n      - {table: public.orders",
    ),
    (
        "WHERE c.id = ANY(%(ids)s::bigint[])",
        "WHERE c.id = ANY(%(ids)s::int[])",
        "resources.customers.query",
        'the query fails for each of the 3 ids sampled from backfill.ids_query: value "<value>" '
        "is out of range for type integer",
        "    query: |",
    ),
]


@pytest.fixture
def source(database: PostgresConfig) -> Iterator[PostgresConfig]:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, tenant text NOT NULL, email text,"
            " created_at timestamptz, vip boolean, balance numeric(12,2), settings jsonb)"
        )
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, total bigint)"
        )
        conn.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        conn.execute("CREATE TABLE addresses (id bigint PRIMARY KEY, customer_id bigint)")
        conn.execute(
            "INSERT INTO customers VALUES"
            " (5000000001, 'm1', 'a@example.com', '2024-01-01Z', false, 10.50, '{\"tenant\": 1}'),"
            " (5000000002, 'm1', 'b@example.com', '2024-01-02Z', true, 0, '{}'),"
            " (5000000003, 'm2', 'c@example.com', '2024-01-03Z', false, 99.99, '{}')"
        )
        conn.execute(
            "INSERT INTO orders VALUES (1, 5000000001, 1250), (2, 5000000001, 500),"
            " (3, 5000000002, 990)"
        )
    yield database


@pytest.fixture(autouse=True)
def _env(source: PostgresConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", source.dsn)
    monkeypatch.setenv("JWT_SECRET", "unused-" * 5)  # 32 bytes at least: HS256
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")


def _line_of(text: str, fragment: str) -> int:
    return text[: text.index(fragment)].count("\n") + 1


def test_a_sound_definition_passes_the_source_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path), "--source"]) == 0
    out, err = capsys.readouterr()
    assert "valid (and against the source database)" in out
    assert err == ""


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m[2] for m in MISTAKES])
def test_each_mistake_is_named_with_its_line_and_path_and_run_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mistake: tuple[str, ...]
) -> None:
    # The line named is the line of the field the path ends at (by default, the edited one).
    old, new, where, reason = mistake[:4]
    anchor = mistake[4] if len(mistake) > 4 else new
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    assert main(["validate", str(path), "--source"]) == 2
    lines = capsys.readouterr().err.splitlines()
    named = [line for line in lines if f": {where}: " in line and reason in line]
    assert named, lines
    assert named[0].startswith(f"{path}:{_line_of(text, anchor)}: "), named
    assert "does not stop run" not in named[0], named

    # run refuses before it starts anything (the broker here does not even exist).
    assert main(["run", str(path)]) == 2
    assert any(f": {where}: " in line for line in capsys.readouterr().err.splitlines())


def test_every_problem_is_named_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD
    for old, new, *_ in MISTAKES[:3]:
        text = text.replace(old, new, 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate", str(path), "--source"]) == 2
    err = capsys.readouterr().err
    for _, _, where, *_ in MISTAKES[:3]:
        assert f": {where}: " in err, err


def test_a_tenant_null_in_some_rows_is_told_and_run_starts(
    source: PostgresConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An order of a customer that is not there: its record has no tenant (dead-lettered at run
    # time); the definition is right for the others.
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (4, 5000000099, 100)")
    text = GOOD.replace("FROM orders o JOIN customers c", "FROM orders o LEFT JOIN customers c")
    path = tmp_path / "some-null.yaml"
    path.write_text(text)
    anchor = "    tenant: tenant\n    triggers:\n      - {table: public.orders"
    told = (
        f"{path}:{_line_of(text, anchor)}: resources.orders.tenant: tenant column tenant is null "
        "for id 4 (of 4 sampled from public.orders): those records are dead-lettered until it "
        "is set (this does not stop run)"
    )

    assert main(["validate", str(path), "--source"]) == 0
    out, err = capsys.readouterr()
    assert "valid (and against the source database)" in out
    assert err.splitlines() == [told]

    started = _fake_service(monkeypatch)
    assert main(["run", str(path), "--role", "router"]) == 0
    assert len(started) == 1
    assert told in capsys.readouterr().err.splitlines()


def test_a_query_failing_for_some_ids_is_told_and_does_not_stop_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A data error of one row (recompute dead-letters that entity alone), found by halves.
    text = GOOD.replace(
        "WHERE c.id = ANY(%(ids)s::bigint[])",
        "WHERE c.id = ANY(%(ids)s::bigint[]) AND 1 / (c.id - 5000000002) IS NOT NULL",
    )
    path = tmp_path / "one-fails.yaml"
    path.write_text(text)
    assert main(["validate", str(path), "--source"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:{_line_of(text, '    query: |')}: resources.customers.query: the query fails "
        "for id 5000000002 (of 3 sampled from backfill.ids_query): division by zero; those "
        "records are dead-lettered (this does not stop run)"
    ]


def test_values_reach_cannot_be_sent_are_named_by_field_and_do_not_stop_run(
    source: PostgresConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Timestamps allow infinity and BC dates, numerics NaN: the rows are wrong, not the
    # definition, and at run time each such record is dead-lettered naming its field.
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET created_at = 'infinity' WHERE id = 5000000001")
        conn.execute("UPDATE customers SET created_at = '0044-03-15 BC' WHERE id = 5000000003")
        conn.execute("UPDATE customers SET balance = 'NaN' WHERE id = 5000000002")
    raw = "      balance: {column: balance, format: raw}\n"
    text = GOOD.replace(raw, "      balance: {column: balance, format: decimal}\n")
    assert text != GOOD
    path = tmp_path / "values.yaml"
    path.write_text(text)
    assert main(["validate", str(path), "--source"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:{_line_of(text, '      createdAt:')}: "
        "resources.customers.mapping.createdAt.column: created_at (timestamp with time zone) "
        "holds a value Reach cannot be sent (infinity, a "
        "date before year 1 or after 9999, NaN or Infinity) for id 5000000001 (and 1 more of 3 "
        "sampled from backfill.ids_query): those records are dead-lettered, naming the field; fix "
        "the rows, or map such values in the query (this does not stop run)",
        f"{path}:{_line_of(text, '      balance:')}: resources.customers.mapping.balance.column: "
        "balance (numeric(12,2)) holds a value Reach cannot be sent (infinity, a date before "
        "year 1 or after 9999, NaN or Infinity) for id 5000000002 (of 3 sampled from "
        "backfill.ids_query): those records are dead-lettered, naming the field; fix the rows, "
        "or map such values in the query (this does not stop run)",
    ]
    started = _fake_service(monkeypatch)
    assert main(["run", str(path), "--role", "router"]) == 0
    assert len(started) == 1


def test_empty_tables_sample_nothing_and_pass(
    source: PostgresConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM orders")
        conn.execute("DELETE FROM customers")
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path), "--source"]) == 0
    assert capsys.readouterr().err == ""


def test_sample_zero_skips_the_data_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace(
        "FROM customers c WHERE c.id",
        "FROM customers c JOIN orders o2 ON o2.customer_id = c.id WHERE c.id",
    )
    path = tmp_path / "fans-out.yaml"
    path.write_text(text)
    assert main(["validate", str(path), "--source", "--sample", "0"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["validate", str(path), "--source", "--sample", "1"]) == 2
    assert "the query returned 2 rows for id 5000000001 (of 1 sampled" in capsys.readouterr().err


def test_the_shop_example_passes_against_its_seeded_database(
    source: PostgresConfig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(source.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE customers, orders, addresses")
    seed(source.dsn)
    for name, value in {**OFFLINE_ENV, "REACH_SYNC_DATABASE_URL": source.dsn}.items():
        monkeypatch.setenv(name, value)
    assert main(["validate", str(EXAMPLE), "--source"]) == 0
    assert capsys.readouterr().err == ""


def _fake_service(monkeypatch: pytest.MonkeyPatch) -> list[SyncDefinition]:
    """``run`` with a service that returns at once: the definitions it was started with."""
    import consumer.service
    from consumer.cli import commands

    started: list[SyncDefinition] = []

    def run_service(
        definition: SyncDefinition, stop: threading.Event, **kwargs: Any
    ) -> ServiceStats:
        started.append(definition)
        stats: ServiceStats = kwargs["stats"]
        return stats

    monkeypatch.setattr(consumer.service, "run_service", run_service)
    monkeypatch.setattr(consumer.service, "install_stop_signals", lambda stop: None)
    monkeypatch.setattr(commands, "abandoned_consumers", lambda: 0)
    return started


def test_run_waits_for_an_unreachable_database_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    """A process started during a database outage (a restarted pod, a kill -9 under load) rides
    it out as a running one does; it used to exit 1 at its definition check, so an orchestrator
    restarted it in a loop until the database was back."""
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "REACH_SYNC_DATABASE_URL": f"postgresql://reach:pw@127.0.0.1:{port}/shop",
    }
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer.cli.main", "run", str(EXAMPLE)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "checking again" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.2)
        assert "source database unavailable for the definition check" in log_path.read_text()
        time.sleep(2.0)  # more than one retry: it keeps waiting
        assert process.poll() is None, log_path.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
