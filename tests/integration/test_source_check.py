"""The definition checked against a real source database (consumer/source_check.py): each
mistake that YAML validation cannot see is named by ``validate --source`` with its file, line and
path, all at once, and ``run`` refuses to start on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from reach_devstack.postgres import PostgresConfig

from consumer.cli.main import main

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
      SELECT c.id, c.tenant, c.email, c.created_at, c.vip,
             (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) AS orders
        FROM customers c WHERE c.id = ANY(%(ids)s::bigint[])
    mapping:
      customerId: {column: id, format: string}
      email: {column: email, pii: send}
      createdAt: {column: created_at, format: datetime}
      vip: {column: vip, format: boolean}
      orders: {column: orders, format: integer}
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
]


@pytest.fixture
def source(database: PostgresConfig) -> Iterator[PostgresConfig]:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, tenant text NOT NULL, email text,"
            " created_at timestamptz, vip boolean)"
        )
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, total bigint)"
        )
        conn.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    yield database


@pytest.fixture(autouse=True)
def _env(source: PostgresConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", source.dsn)
    monkeypatch.setenv("JWT_SECRET", "unused")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")


def _line_of(text: str, fragment: str) -> int:
    return text[: text.index(fragment)].count("\n") + 1


def test_a_sound_definition_passes_the_source_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path), "--source"]) == 0
    assert "valid (and against the source database)" in capsys.readouterr().out


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
    named = [line for line in lines if f": {where}: " in line]
    assert named, lines
    assert reason in named[0], named
    assert named[0].startswith(f"{path}:{_line_of(text, anchor)}: "), named

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
