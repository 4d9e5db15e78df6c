"""``reach-sync db-access`` on a real Postgres (consumer/access/): logged in as the reading role,
each view holds, row for row and column for column, what projection.py makes of the recompute of
every entity of its tenant (the sample shop, and a table of every format and type the views
claim exact, PII hashes included); the role reads the views and nothing else; apply is one
transaction, repeatable, and rotates the password; what it would refuse leaves nothing behind;
drop removes it all."""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql
from reach_devstack.postgres import PostgresConfig
from reach_devstack.shop import seed

from consumer.cli.access import add_access_commands
from consumer.config import Resource, SyncDefinition
from consumer.config_file import load_definition
from consumer.sink.projection import json_text, project
from consumer.sink.recompute import SourceDatabase
from tests.shop_definition import EXAMPLE, OFFLINE_ENV, shop_definition

SCHEMA = "reach_access"

PEOPLE = """
version: 1
source:
  kafka: {bootstrap_servers: "127.0.0.1:1", group_id: db-access, topics: [unused]}
  database: {dsn_env: DATABASE_URL}
resources:
  people:
    reach_schema: people
    key: id
    tenant: tenant
    triggers: [{table: public.people, id: id}]
    query: |
      SELECT p.*, p.email LIKE '%%@example.com%%' AS example FROM people p
       WHERE p.id = ANY(%(ids)s)
    mapping:
      personId: {column: id, format: string}
      email: {column: email, pii: hash}
      emailText: {column: email, format: string, pii: send}
      code: {column: code, format: string}
      codeHash: {column: code, pii: hash}
      optIn: {column: opt_in, format: boolean}
      vip: {column: vip, format: boolean}
      spent: {column: spent_cents, format: decimal_cents}
      spentHash: {column: spent_cents, format: decimal_cents, pii: hash}
      visits: {column: visits, format: integer}
      visitsHash: {column: visits, format: integer, pii: hash}
      born: {column: born, format: date}
      bornAt: {column: born, format: datetime}
      seenAt: {column: seen, format: datetime}
      seenOn: {column: seen, format: date}
      seenHash: {column: seen, format: datetime, pii: hash}
      joinedAt: {column: joined, format: datetime}
      joinedOn: {column: joined, format: date}
      joinedRaw: {column: joined}
      score: {column: score}
      scoreExact: {column: score, format: decimal}
      scoreHash: {column: score, format: decimal, pii: hash}
      pi: {column: pi, format: decimal}
      piRaw: {column: pi}
      piHash: {column: pi, format: decimal, pii: hash}
      vipExact: {column: vip, format: decimal}
      ratioExact: {column: ratio, format: decimal}
      ratio: {column: ratio}
      data: {column: data}
      tags: {column: tags}
      uid: {column: uid, format: string}
      uidRaw: {column: uid}
      active: {column: active, format: string}
      activeHash: {column: active, format: boolean, pii: hash}
      name: {column: name, pii: hash}
      example: {column: example, format: boolean}
    groups:
      field: cohorts
      rules:
        - {name: zeta, when: "ratio > 0.5"}
        - {name: alpha, when: "lower(btrim(opt_in)) = 'yes'"}
        - {name: Beta, when: "tags @> ARRAY['x']"}
    delivery: {mode: batch}
    tenants_query: SELECT DISTINCT tenant FROM people
  vips:
    reach_schema: vips
    key: id
    tenant: tenant
    triggers: [{table: public.people, id: id}]
    query: "SELECT p.id, p.tenant, p.name FROM people p WHERE p.id = ANY(%(ids)s)"
    mapping: {personId: {column: id, format: integer}, name: {column: name, pii: send}}
    delivery: {mode: batch}
    tenants_query: SELECT DISTINCT tenant FROM people
    backfill:
      ids_query: |
        SELECT id FROM people WHERE vip = 1
           AND (%(after)s::bigint IS NULL OR id > %(after)s::bigint) ORDER BY id LIMIT %(limit)s
destination:
  base_url: "http://127.0.0.1:1"
  auth: {mode: jwt, partner_id: p, secret_env: JWT_SECRET}
redis: {url_env: REDIS_URL, key_prefix: db-access}
topics: {dirty: t.dirty, dirty_partitions: 1, dead_letter: t.dead-letter, audit: t.audit}
"""

PEOPLE_TABLE = """
CREATE TABLE people (
    id bigint PRIMARY KEY, tenant text NOT NULL, email text, code char(6), opt_in text,
    vip int, spent_cents numeric(14, 0), visits text, born date, seen timestamp,
    joined timestamptz, score numeric(10, 3), ratio float8, data jsonb, tags text[], uid uuid,
    active boolean, name text, pi numeric
)
"""
# Values every format must carry exactly: whitespace Python strips and btrim does not,
# non-ASCII capitals, microseconds (and milliseconds only), a zone other than UTC, amounts
# whose float text is 0.0, 0.05, 1.0 and 1234.5, numerics no float holds.
PEOPLE_ROWS: list[tuple[Any, ...]] = [
    (1, "acme", "  Ada@Example.COM\n", "ab", " YES ", 1, 123456, " 42 ", "2024-02-29",
     "2024-03-01 23:59:59.123999", "2024-03-01 23:30:00.5-05", "1.500", 0.1,
     '{"a": [1, 2.5, "x"], "b": null}', ["x", "y"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", True,
     "\u3000JOSÉ ΣΑΣ\u00a0", "3.14159265358979323846"),
    (2, "acme", "bob@example.com", "c", "f", 0, 0, "-3", "1999-12-31", "1999-12-31 00:00:00",
     "1999-12-31 19:00:00-05", "0.001", 0.75, "[]", ["y"], None, False, "Émile", "0.0000001"),
    (3, "Globex Corp", None, None, None, None, None, None, None, None, None, None, None, None,
     None, None, None, None, None),
    (4, "Globex Corp", "Zoë@Example.com", "xyz123", "t", 1, 5, "7", "2025-01-01",
     "2025-06-30 12:00:00.000001", "2025-06-30 12:00:00+02", "-2.250", 1e-7, '{"k": "v"}',
     ["x"], "00000000-0000-0000-0000-000000000000", None, "İstanbul",
     "-12345678901234567890.123456789"),
    (5, "acme", "c@d.e", "      ", "no", 1, 100, "0", "0999-01-01", "2024-01-01 00:00:00.999",
     "2024-01-01 00:00:00.9991+00", "0", 1e16, '{"n": 1.0}', [], None, True, "plain", "1E+20"),
    (6, "acme", "e@f.g", "q", "1", 0, 123450, "12", "2024-01-01", "2024-01-01 00:00:00",
     "2024-01-01 00:00:00+00", "3", 2.0, "null", ["x", "z"], None, False, "ΣΑΣ", "12.30"),
]  # fmt: skip


def _run(*argv: str) -> int:
    """A db-access command as `reach-sync` runs it (the lead adds it to consumer/cli/main.py)."""
    parser = argparse.ArgumentParser(prog="reach-sync")
    add_access_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def _login(database: PostgresConfig, role: str, password: str) -> psycopg.Connection[Any]:
    """A real password login as the role, over TCP on loopback (scram-sha-256, pg_hba's
    host rule of initdb --auth-host), not SET ROLE in an admin's session."""
    return psycopg.connect(
        host="127.0.0.1",
        port=database.port,
        dbname=database.database,
        user=role,
        password=password,
        connect_timeout=5,
    )


def _exists(database: PostgresConfig, query: str, *params: Any) -> bool:
    with psycopg.connect(database.dsn) as conn:
        return conn.execute(query, params).fetchone() is not None


@pytest.fixture
def role(database: PostgresConfig, unique: Callable[[str], str]) -> Iterator[str]:
    """A role name no other test uses (roles belong to the cluster), dropped afterwards."""
    name = unique("reader")
    yield name
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
def shop(database: PostgresConfig, monkeypatch: pytest.MonkeyPatch) -> PostgresConfig:
    seed(database.dsn, merchants=3, customers=60, transactions=150)
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        # A customer with a name missing, and one with no transactions nor phone.
        conn.execute(
            "INSERT INTO customers (merchant_id, email, first_name, created_at) VALUES "
            "(2, 'Nobody@Example.com', NULL, '2025-03-01 10:00:00.5+00')"
        )
    for name, value in {**OFFLINE_ENV, "REACH_SYNC_DATABASE_URL": database.dsn}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("READER_PASSWORD", "first-password")
    return database


@pytest.fixture
def people(
    database: PostgresConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[PostgresConfig, Path]:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(PEOPLE_TABLE)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO people VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s, %s, %s, %s, %s)",
                PEOPLE_ROWS,
            )
    path = tmp_path / "people.yaml"
    path.write_text(PEOPLE)
    monkeypatch.setenv("DATABASE_URL", database.dsn)
    monkeypatch.setenv("JWT_SECRET", "unused")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("READER_PASSWORD", "first-password")
    return database, path


def _expected(
    definition: SyncDefinition, name: str, ids: list[int]
) -> dict[str, list[dict[str, Any]]]:
    """What the API would send for ``ids``, by tenant: the product's recompute, then project."""
    resource = definition.resources[name]

    async def recompute() -> dict[str, list[dict[str, Any]]]:
        db = SourceDatabase(definition.source.database)
        await db.open()
        try:
            recomputed = await db.recompute(resource, ids)
        finally:
            await db.close()
        assert not recomputed.failed
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in recomputed.rows.values():
            projected = project(resource, row)
            by_tenant[projected.tenant].append(projected.record)
        return by_tenant

    return asyncio.run(recompute())


def _canonical(resource: Resource, records: list[dict[str, Any]]) -> list[str]:
    """Records as JSON, sorted: what a JSON body carries. A decimal field's number by its digits
    (the view's numeric is the API's text exactly); any other number by its value (a numeric
    1.500 in the view is the API's 1.5)."""
    digits = {f for f, m in resource.mapping.items() if m.format == "decimal" and m.pii == "none"}

    def json(record: dict[str, Any]) -> str:
        as_sent = {k: _digits(v) if k in digits else _value(v) for k, v in record.items()}
        return orjson.dumps(as_sent, option=orjson.OPT_SORT_KEYS).decode()

    return sorted(json(r) for r in records)


def _digits(value: Any) -> Any:
    """A view's numeric as the JSON of its digits (what the API's Fragment holds)."""
    return orjson.Fragment(format(value, "f")) if isinstance(value, Decimal) else value


def _value(value: Any) -> Any:
    """Every number (a view's Decimal, the API's float or Fragment) as the JSON of its value."""
    if isinstance(value, bool) or not isinstance(
        value, int | float | Decimal | orjson.Fragment | list | dict
    ):
        return value
    if isinstance(value, list):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _value(v) for k, v in value.items()}
    if isinstance(value, orjson.Fragment):
        number = Decimal(json_text(value))
    elif isinstance(value, float):
        number = Decimal(repr(value))
    else:
        number = Decimal(value)
    text = format(number, "f")
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return orjson.Fragment("0" if text == "-0" else text)


def _views_equal_the_api(
    database: PostgresConfig,
    role: str,
    password: str,
    definition: SyncDefinition,
    ids: dict[str, list[int]],
    views: dict[tuple[str, str], str],
) -> None:
    with _login(database, role, password) as conn:
        # The reader's session settings must not change what a view holds.
        conn.execute("SET TimeZone = 'America/New_York'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET extra_float_digits = 3")
        for name, resource in definition.resources.items():
            expected = _expected(definition, name, ids[name])
            fields = [*resource.mapping, *([resource.groups.field] if resource.groups else [])]
            tenants = {t for (r, t) in views if r == name}
            assert tenants >= set(expected), f"{name}: a tenant with entities has no view"
            for tenant in tenants:
                cursor = conn.execute(
                    sql.SQL("SELECT * FROM {}").format(sql.Identifier(SCHEMA, views[name, tenant]))
                )
                assert [c.name for c in cursor.description or ()] == fields
                rows = [dict(zip(fields, row, strict=True)) for row in cursor.fetchall()]
                assert _canonical(resource, rows) == _canonical(
                    resource, expected.get(tenant, [])
                ), f"{name} for {tenant}"


def _ids(database: PostgresConfig, query: str) -> list[int]:
    with psycopg.connect(database.dsn) as conn:
        return [row[0] for row in conn.execute(query)]


# --- what the views hold -------------------------------------------------------------------------


def test_each_shop_view_holds_exactly_what_the_api_sends_for_its_tenant(
    shop: PostgresConfig, role: str
) -> None:
    assert _run("db-access", "apply", "--config", str(EXAMPLE), "--role", role,
                "--password-env", "READER_PASSWORD") == 0  # fmt: skip
    definition = shop_definition(REACH_SYNC_DATABASE_URL=shop.dsn)
    tenants = ["merchant-1", "merchant-2", "merchant-3"]
    views = {
        (r, t): f"{r}__{t.replace('-', '_')}"
        for r in ("customers", "transactions")
        for t in tenants
    }
    ids = {
        "customers": _ids(shop, "SELECT id FROM customers"),
        "transactions": _ids(shop, "SELECT id FROM transactions"),
    }
    _views_equal_the_api(shop, role, "first-password", definition, ids, views)


def test_every_format_and_pii_hash_the_views_claim_exact_equals_the_projection(
    people: tuple[PostgresConfig, Path], role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database, path = people
    assert _run("db-access", "apply", "--config", str(path), "--role", role,
                "--password-env", "READER_PASSWORD") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "every view column is what the API sends" in out
    # A tenant's name made a name part; the ids_query's ids only, for vips.
    assert f"{SCHEMA}.people__globex_corp: people, tenant Globex Corp" in out
    definition = load_definition(path)
    views = {
        (r, t): f"{r}__{t.lower().replace(' ', '_')}"
        for r in ("people", "vips")
        for t in ("acme", "Globex Corp")
    }
    ids = {
        "people": [row[0] for row in PEOPLE_ROWS],
        "vips": [row[0] for row in PEOPLE_ROWS if row[5] == 1],
    }
    _views_equal_the_api(database, role, "first-password", definition, ids, views)


def test_plan_prints_the_whole_sql_and_changes_nothing(
    shop: PostgresConfig, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("db-access", "plan", "--config", str(EXAMPLE), "--role", role) == 0
    out = capsys.readouterr().out
    assert out.count("CREATE VIEW") == 6
    assert f'CREATE ROLE "{role}" WITH LOGIN' in out
    assert "BEGIN;" in out and out.rstrip().endswith("COMMIT;")
    assert "first-password" not in out
    assert not _exists(shop, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SCHEMA)
    assert not _exists(shop, "SELECT 1 FROM pg_roles WHERE rolname = %s", role)


def test_a_format_sql_cannot_give_exactly_is_named_in_the_plan(
    people: tuple[PostgresConfig, Path], role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = people
    path.write_text(PEOPLE.replace("active: {column: active, format: string}",
                                   "active: {column: ratio, format: string}"))  # fmt: skip
    assert _run("db-access", "plan", "--config", str(path), "--role", role) == 0
    out = capsys.readouterr().out
    assert "-- not exactly what the API sends:" in out
    assert "--   people.active: not exact: the string of a float8 column" in out


# --- the role ------------------------------------------------------------------------------------


def test_the_role_reads_its_views_and_nothing_else(shop: PostgresConfig, role: str) -> None:
    assert _run("db-access", "apply", "--config", str(EXAMPLE), "--role", role,
                "--password-env", "READER_PASSWORD", "--tenant", "merchant-1") == 0  # fmt: skip
    with _login(shop, role, "first-password") as conn:
        assert conn.execute(f"SELECT count(*) FROM {SCHEMA}.customers__merchant_1").fetchone()
        for table in ("public.customers", "public.transactions", "public.merchants"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT 1 FROM {table} LIMIT 1")
            conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"CREATE TABLE {SCHEMA}.mine (x int)")
    with psycopg.connect(shop.dsn) as conn:
        grants = conn.execute(
            "SELECT table_schema, table_name, privilege_type FROM "
            "information_schema.role_table_grants WHERE grantee = %s ORDER BY 2",
            (role,),
        ).fetchall()
        attributes = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, "
            "rolreplication FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone()
    assert grants == [
        (SCHEMA, "customers__merchant_1", "SELECT"),
        (SCHEMA, "transactions__merchant_1", "SELECT"),
    ]
    assert attributes == (True, False, False, False, False, False)


def test_apply_again_is_idempotent_rotates_the_password_and_follows_column_changes(
    people: tuple[PostgresConfig, Path],
    role: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database, path = people
    apply = ("db-access", "apply", "--config", str(path), "--role", role,
             "--password-env", "READER_PASSWORD")  # fmt: skip
    assert _run(*apply) == 0
    assert _run(*apply) == 0  # the same again: nothing to change, nothing fails
    monkeypatch.setenv("READER_PASSWORD", "second-password")
    # A column less, and one retyped: CREATE OR REPLACE VIEW could do neither.
    path.write_text(
        PEOPLE.replace("      emailText: {column: email, format: string, pii: send}\n", "").replace(
            "visits: {column: visits, format: integer}", "visits: {column: visits}"
        )
    )
    assert _run(*apply, "--connection-limit", "3") == 0
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _login(database, role, "first-password").close()
    with _login(database, role, "second-password") as conn:
        cursor = conn.execute(f"SELECT * FROM {SCHEMA}.people__acme WHERE \"personId\" = '1'")
        columns = [c.name for c in cursor.description or ()]
        row = dict(zip(columns, cursor.fetchone() or (), strict=True))
        limit = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user")
        assert limit.fetchone() == (3,)
    assert "emailText" not in columns
    assert row["visits"] == " 42 "
    with psycopg.connect(database.dsn) as conn:
        views = conn.execute(
            "SELECT count(*) FROM pg_views WHERE schemaname = %s", (SCHEMA,)
        ).fetchone()
    assert views == (4,)


def test_a_role_with_more_rights_is_refused_naming_the_right_and_nothing_is_applied(
    people: tuple[PostgresConfig, Path], role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database, path = people
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
    code = _run("db-access", "apply", "--config", str(path), "--role", role,
                "--password-env", "READER_PASSWORD")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"role {role} already exists" in err and "CREATEDB" in err
    assert not _exists(database, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SCHEMA)
    # Nor does drop take a role that is not a reader's.
    assert _run("db-access", "drop", "--config", str(path), "--role", role) == 2
    assert "Refusing to drop it" in capsys.readouterr().err
    assert _exists(database, "SELECT 1 FROM pg_roles WHERE rolname = %s", role)


@pytest.mark.parametrize(
    ("grant", "named"),
    [
        ("GRANT SELECT ON people TO {role}", "a grant on table people"),
        ("GRANT SELECT (email) ON people TO {role}", "a grant on column email of table people"),
        ("GRANT pg_read_all_data TO {role}", "membership in role pg_read_all_data"),
    ],
)
def test_a_role_with_a_grant_outside_the_schema_or_a_membership_is_refused(
    people: tuple[PostgresConfig, Path],
    role: str,
    grant: str,
    named: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, path = people
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL(grant).format(role=sql.Identifier(role)))
    code = _run("db-access", "apply", "--config", str(path), "--role", role,
                "--password-env", "READER_PASSWORD")  # fmt: skip
    assert code == 2
    assert named in capsys.readouterr().err
    assert not _exists(database, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SCHEMA)


# --- names ---------------------------------------------------------------------------------------


def test_two_tenants_that_would_share_a_view_name_are_refused_naming_both(
    shop: PostgresConfig, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run("db-access", "apply", "--config", str(EXAMPLE), "--role", role,
                "--password-env", "READER_PASSWORD",
                "--tenant", "merchant-1", "--tenant", "Merchant_1")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"two views would be named {SCHEMA}.customers__merchant_1" in err
    assert "'merchant-1'" in err and "'Merchant_1'" in err
    assert not _exists(shop, "SELECT 1 FROM pg_roles WHERE rolname = %s", role)


def test_an_object_db_access_did_not_make_by_a_view_name_is_refused_naming_it(
    shop: PostgresConfig, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(shop.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.customers__merchant_2 (x int)")
    code = _run("db-access", "apply", "--config", str(EXAMPLE), "--role", role,
                "--password-env", "READER_PASSWORD")  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"{SCHEMA}.customers__merchant_2 (a table) already exists" in err
    assert not _exists(shop, "SELECT 1 FROM pg_roles WHERE rolname = %s", role)
    assert not _exists(shop, "SELECT 1 FROM pg_views WHERE schemaname = %s", SCHEMA)


def test_a_resource_with_no_tenants_query_and_no_tenant_given_is_named(
    people: tuple[PostgresConfig, Path], role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = people
    path.write_text(PEOPLE.replace("    tenants_query: SELECT DISTINCT tenant FROM people\n", ""))
    assert _run("db-access", "plan", "--config", str(path), "--role", role) == 2
    assert "resources.people: which tenants?" in capsys.readouterr().err
    assert _run("db-access", "plan", "--config", str(path), "--role", role,
                "--tenant", "acme") == 0  # fmt: skip


# --- connections ---------------------------------------------------------------------------------


def test_apply_on_a_read_only_database_says_to_give_the_primary_with_dsn_env(
    shop: PostgresConfig,
    role: str,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # source.database as a replica is: every session read-only.
    replica = unique("replica")
    with psycopg.connect(shop.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE ROLE {r} LOGIN PASSWORD 'replica-pw' IN ROLE pg_read_all_data;"
                " ALTER ROLE {r} SET default_transaction_read_only = on"
            ).format(r=sql.Identifier(replica))
        )
    replica_dsn = f"postgresql://{replica}:replica-pw@127.0.0.1:{shop.port}/{shop.database}"
    monkeypatch.setenv("REACH_SYNC_DATABASE_URL", replica_dsn)
    monkeypatch.setenv("PRIMARY_URL", shop.dsn)
    apply = ("db-access", "apply", "--config", str(EXAMPLE), "--role", role,
             "--password-env", "READER_PASSWORD")  # fmt: skip
    try:
        assert _run("db-access", "plan", "--config", str(EXAMPLE), "--role", role) == 0
        assert _run(*apply) == 2
        assert "the database is read-only (a replica?)" in capsys.readouterr().err
        assert not _exists(shop, "SELECT 1 FROM pg_roles WHERE rolname = %s", role)
        assert _run(*apply, "--dsn-env", "PRIMARY_URL") == 0
    finally:
        with psycopg.connect(shop.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(replica)))


def test_apply_without_a_password_is_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    assert _run("db-access", "apply", "--config", str(EXAMPLE)) == 2
    assert "needs --password-env" in capsys.readouterr().err
    monkeypatch.delenv("NO_SUCH_PASSWORD", raising=False)
    assert _run("db-access", "apply", "--config", str(EXAMPLE),
                "--password-env", "NO_SUCH_PASSWORD") == 2  # fmt: skip
    assert "--password-env NO_SUCH_PASSWORD" in capsys.readouterr().err


# --- drop ----------------------------------------------------------------------------------------


def test_drop_removes_the_views_the_schema_and_the_role(
    shop: PostgresConfig, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("db-access", "apply", "--config", str(EXAMPLE), "--role", role,
                "--password-env", "READER_PASSWORD") == 0  # fmt: skip
    assert _run("db-access", "drop", "--config", str(EXAMPLE), "--role", role) == 0
    out = capsys.readouterr().out
    assert out.count("DROP VIEW") == 6 and f'DROP ROLE "{role}"' in out
    assert not _exists(shop, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SCHEMA)
    assert not _exists(shop, "SELECT 1 FROM pg_roles WHERE rolname = %s", role)
    assert _run("db-access", "drop", "--config", str(EXAMPLE), "--role", role) == 0
    assert "nothing to drop" in capsys.readouterr().out


def test_drop_keeps_a_schema_that_holds_other_objects(
    shop: PostgresConfig,
    role: str,
    unique: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = unique("other_reader")
    apply = ("db-access", "apply", "--config", str(EXAMPLE), "--password-env", "READER_PASSWORD",
             "--tenant", "merchant-1")  # fmt: skip
    assert _run(*apply, "--role", role) == 0
    # Another role's views in the same schema need other names: another tenant.
    assert _run(*apply[:-1], "merchant-2", "--role", other) == 0
    try:
        assert _run("db-access", "drop", "--config", str(EXAMPLE), "--role", role) == 0
        assert f"kept schema {SCHEMA}: it holds other objects" in capsys.readouterr().out
        assert _exists(shop, "SELECT 1 FROM pg_views WHERE viewname = 'customers__merchant_2'")
        assert not _exists(shop, "SELECT 1 FROM pg_views WHERE viewname = 'customers__merchant_1'")
    finally:
        assert _run("db-access", "drop", "--config", str(EXAMPLE), "--role", other) == 0
    assert not _exists(shop, "SELECT 1 FROM pg_namespace WHERE nspname = %s", SCHEMA)
