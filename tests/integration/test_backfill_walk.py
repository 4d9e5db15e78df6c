"""Walking a resource's ids on a real Postgres (consumer/backfill/walk.py): keyset pages in key
order from the trigger table's primary key (bigint and text) or the resource's own ids_query;
tenant, --where and --since keep exactly the ids the resource query returns under them; a broken
--where or a resource with no way to walk it is a configuration error, found before any page;
the database going away is retryable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from reach_devstack.postgres import PostgresConfig

from consumer.backfill.walk import IdWalker, Page, connect, ids_query
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import ConfigurationError, Retryable
from consumer.router.dirty import EntityId

DEFINITION = """
version: 1
source:
  kafka: {bootstrap_servers: "127.0.0.1:1", group_id: backfill-walk, topics: [unused]}
  database: {dsn_env: DATABASE_URL}
resources:
  items:
    reach_schema: items
    key: id
    tenant: tenant
    triggers:
      - {table: public.item_notes, id: item_id}
      - {table: public.items, id: id}
    query: |
      SELECT i.id, i.tenant, i.flag, i.label, i.updated_at FROM items i WHERE i.id = ANY(%(ids)s)
    mapping: {itemId: {column: id, format: string}}
    delivery: {mode: batch}
    backfill: {since_column: updated_at}
  codes:
    reach_schema: codes
    key: code
    tenant: tenant
    triggers: [{table: public.codes, id: code}]
    query: "SELECT c.code, c.tenant FROM codes c WHERE c.code = ANY(%(ids)s)"
    mapping: {code: {column: code}}
    delivery: {mode: batch}
  flagged:
    reach_schema: flagged
    key: id
    tenant: tenant
    triggers: [{table: public.items, id: id}]
    query: "SELECT i.id, i.tenant FROM items i WHERE i.id = ANY(%(ids)s)"
    mapping: {itemId: {column: id}}
    delivery: {mode: batch}
    backfill:
      ids_query: |
        SELECT id FROM items
         WHERE flag AND (%(after)s::bigint IS NULL OR id > %(after)s::bigint)
         ORDER BY id LIMIT %(limit)s
  unkeyed:
    reach_schema: unkeyed
    key: id
    tenant: tenant
    triggers:
      - {table: public.item_notes, id: item_id}
      - {table: public.items, id: tenant}
      - {table: public.no_such_table, id: id}
    query: "SELECT i.id, i.tenant FROM items i WHERE i.id = ANY(%(ids)s)"
    mapping: {itemId: {column: id}}
    delivery: {mode: batch}
destination:
  base_url: "http://127.0.0.1:1"
  auth: {mode: jwt, partner_id: p, secret_env: JWT_SECRET}
redis: {url_env: REDIS_URL, key_prefix: backfill-walk}
topics: {dirty: t.dirty, dirty_partitions: 1, dead_letter: t.dead-letter, audit: t.audit}
"""

# Item ids with gaps, inserted out of order: id -> (tenant, flag, label, minutes after T0).
ITEMS: dict[int, tuple[str, bool, str]] = {
    i * 7 + 3: ("acme" if i % 3 else "globex", i % 2 == 0, f"label {i}") for i in range(25)
}
T0 = datetime(2024, 1, 1, tzinfo=UTC)
CODES = [f"{letter}{n:02d}" for letter in "ba" for n in range(12)] + ["c", "a"]


def _updated_at(item: int) -> datetime:
    return T0 + timedelta(minutes=item)


def _definition(tmp_path: Path, dsn: str) -> SyncDefinition:
    path = tmp_path / "walk.yaml"
    path.write_text(DEFINITION)
    env = {"DATABASE_URL": dsn, "JWT_SECRET": "unused", "REDIS_URL": "redis://127.0.0.1:1/0"}
    return load_definition(path, env)


@pytest.fixture
def source(database: PostgresConfig) -> PostgresConfig:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, tenant text NOT NULL, flag boolean,"
            " label text, updated_at timestamptz NOT NULL)"
        )
        conn.execute("CREATE TABLE item_notes (item_id bigint, note text)")  # no primary key
        conn.execute("CREATE TABLE codes (code text PRIMARY KEY, tenant text NOT NULL)")
        for item in sorted(ITEMS, key=lambda i: (i % 5, -i)):  # not in key order
            tenant, flag, label = ITEMS[item]
            conn.execute(
                "INSERT INTO items VALUES (%s, %s, %s, %s, %s)",
                (item, tenant, flag, label, _updated_at(item)),
            )
        for code in reversed(CODES):
            conn.execute("INSERT INTO codes VALUES (%s, 'acme')", (code,))
    return database


@pytest.fixture
def definition(tmp_path: Path, source: PostgresConfig) -> SyncDefinition:
    return _definition(tmp_path, source.dsn)


@pytest.fixture
async def conn(definition: SyncDefinition) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    connection = await connect(definition.source.database)
    yield connection
    await connection.close()


async def _walker(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition, name: str, **filters: Any
) -> IdWalker:
    resource = definition.resources[name]
    return IdWalker(conn, name, resource, await ids_query(conn, name, resource), **filters)


async def _pages(walker: IdWalker, size: int) -> list[Page]:
    pages, after = [], None
    while True:
        page = await walker.page(after, size)
        pages.append(page)
        if page.last is None:
            return pages
        after = page.last


def _ids(pages: list[Page]) -> list[EntityId]:
    return [i for page in pages for i in page.ids]


# --- the default walk: the trigger table's primary key -------------------------------------------


async def test_bigint_keys_are_walked_in_order_in_pages_across_page_boundaries(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> None:
    walker = await _walker(conn, definition, "items")
    await walker.check()
    pages = await _pages(walker, 10)
    assert [p.walked for p in pages] == [10, 10, 5]
    assert _ids(pages) == sorted(ITEMS)
    assert all(type(i) is int for i in _ids(pages))
    # Each page ends where the next one starts; the last says the walk is over.
    assert [p.last for p in pages] == [sorted(ITEMS)[9], sorted(ITEMS)[19], None]
    assert await walker.total() == len(ITEMS)


async def test_a_walk_that_ends_on_a_page_boundary_ends_with_an_empty_page(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> None:
    pages = await _pages(await _walker(conn, definition, "items"), 5)
    assert [p.walked for p in pages] == [5, 5, 5, 5, 5, 0]
    assert _ids(pages) == sorted(ITEMS)


async def test_a_walk_resumes_after_any_id(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> None:
    walker = await _walker(conn, definition, "items")
    middle = sorted(ITEMS)[12]
    page = await walker.page(middle, 100)
    assert page.ids == sorted(ITEMS)[13:]
    assert page.last is None


async def test_text_keys_are_walked_in_the_database_order(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition, source: PostgresConfig
) -> None:
    with psycopg.connect(source.dsn) as plain:
        in_order = [row[0] for row in plain.execute("SELECT code FROM codes ORDER BY code")]
    walker = await _walker(conn, definition, "codes")
    await walker.check()
    pages = await _pages(walker, 4)
    assert [p.walked for p in pages] == [4, 4, 4, 4, 4, 4, 2]
    assert _ids(pages) == in_order
    assert sorted(in_order) == sorted(CODES)
    assert all(type(i) is str for i in _ids(pages))
    assert await walker.total() == len(CODES)


async def test_a_custom_ids_query_is_what_is_walked(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> None:
    walker = await _walker(conn, definition, "flagged")
    await walker.check()
    pages = await _pages(walker, 4)
    flagged = sorted(i for i, (_, flag, _) in ITEMS.items() if flag)
    assert _ids(pages) == flagged
    assert [p.walked for p in pages] == [4, 4, 4, 1]
    assert await walker.total() == len(flagged)


async def test_without_ids_query_or_a_trigger_table_keyed_by_the_id_the_walk_is_refused(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> None:
    # item_notes has no primary key, items' is not the tenant column, no_such_table does not exist
    with pytest.raises(ConfigurationError) as caught:
        await ids_query(conn, "unkeyed", definition.resources["unkeyed"])
    assert "backfill.ids_query" in str(caught.value)
    assert "unkeyed" in str(caught.value)


# --- filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"tenants": ["globex"]}, lambda i, tenant, flag, label: tenant == "globex"),
        ({"tenants": ["globex", "acme"]}, lambda i, tenant, flag, label: True),
        ({"tenants": ["initech"]}, lambda i, tenant, flag, label: False),
        ({"where": "q.flag"}, lambda i, tenant, flag, label: flag),
        ({"where": "q.id > 100 AND NOT q.flag"}, lambda i, t, flag, label: i > 100 and not flag),
        ({"where": "q.label LIKE 'label 1%'"}, lambda i, t, f, label: label.startswith("label 1")),
        ({"since_ms": int(_updated_at(80).timestamp() * 1000)}, lambda i, t, f, label: i >= 80),
        (
            {"tenants": ["acme"], "where": "q.flag", "since_ms": int(T0.timestamp() * 1000) + 1},
            lambda i, tenant, flag, label: tenant == "acme" and flag and i > 0,
        ),
    ],
    ids=[
        "a tenant",
        "two tenants",
        "a tenant with none",
        "where",
        "where with and",
        "where like",
        "since",
        "all three",
    ],
)
async def test_filters_keep_exactly_the_matching_ids(
    conn: psycopg.AsyncConnection[Any],
    definition: SyncDefinition,
    filters: dict[str, Any],
    keep: Any,
) -> None:
    walker = await _walker(conn, definition, "items", **filters)
    await walker.check()
    pages = await _pages(walker, 6)
    expected = sorted(i for i, row in ITEMS.items() if keep(i, *row))
    assert _ids(pages) == expected
    assert expected != sorted(ITEMS) or filters.get("tenants") == ["globex", "acme"]
    # Progress counts what was read, not what was kept; the walk still covers every id.
    assert sum(p.walked for p in pages) == len(ITEMS)
    assert await walker.total() == len(ITEMS)


async def test_tenants_of_gives_each_id_in_scope_its_tenant(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> None:
    walker = await _walker(conn, definition, "items", where="q.flag")
    ids = sorted(ITEMS)[:6]
    assert await walker.tenants_of(ids) == [(i, ITEMS[i][0]) for i in ids if ITEMS[i][1]]


@pytest.mark.parametrize(
    ("where", "database_says"),
    [("q.flag AND AND q.id > 1", "syntax error"), ("q.nope = 1", "nope")],
    ids=["a syntax error", "a missing column"],
)
async def test_a_broken_where_is_a_configuration_error_from_check(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition, where: str, database_says: str
) -> None:
    walker = await _walker(conn, definition, "items", where=where)
    with pytest.raises(ConfigurationError) as caught:
        await walker.check()
    message = str(caught.value)
    assert "--where" in message
    assert database_says in message
    assert "resources.items" in message


async def test_a_broken_ids_query_is_a_configuration_error_from_check(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> None:
    resource = definition.resources["flagged"]
    broken = resource.model_copy(
        update={
            "backfill": resource.backfill.model_copy(
                update={
                    "ids_query": "SELECT nope FROM items WHERE %(after)s IS NULL LIMIT %(limit)s"
                }
            )
        }
    )
    walker = IdWalker(conn, "flagged", broken, await ids_query(conn, "flagged", broken))
    with pytest.raises(ConfigurationError) as caught:
        await walker.check()
    assert "backfill.ids_query" in str(caught.value)
    assert "nope" in str(caught.value)


# --- the database going away ---------------------------------------------------------------------


async def test_the_database_going_away_mid_walk_is_retryable(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition, source: PostgresConfig
) -> None:
    walker = await _walker(conn, definition, "items")
    first = await walker.page(None, 10)
    assert first.last is not None
    with psycopg.connect(source.admin_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(Retryable):
        await walker.page(first.last, 10)
    with pytest.raises(Retryable):  # and stays so: the connection is gone
        await walker.page(first.last, 10)


async def test_an_unreachable_database_is_retryable(tmp_path: Path) -> None:
    definition = _definition(tmp_path, "postgresql://u:p@127.0.0.1:9/x?connect_timeout=1")
    with pytest.raises(Retryable):
        await connect(definition.source.database)


async def test_a_total_slower_than_the_statement_timeout_is_unknown_and_the_walk_goes_on(
    tmp_path: Path, source: PostgresConfig
) -> None:
    # Counting every id (LIMIT NULL) sleeps past the 200 ms timeout; a page does not.
    slow_count = """
        SELECT id FROM items
         WHERE (%(limit)s::int IS NOT NULL OR pg_sleep(0.5) IS NOT NULL)
           AND (%(after)s::bigint IS NULL OR id > %(after)s::bigint)
         ORDER BY id LIMIT %(limit)s"""
    definition = _definition(tmp_path, source.dsn)
    database = definition.source.database.model_copy(update={"statement_timeout_ms": 200})
    resource = definition.resources["items"]
    slow = resource.model_copy(
        update={"backfill": resource.backfill.model_copy(update={"ids_query": slow_count})}
    )
    connection = await connect(database)
    try:
        walker = IdWalker(connection, "items", slow, await ids_query(connection, "items", slow))
        assert await walker.total() is None
        page = await walker.page(None, 100)
        assert page.ids == sorted(ITEMS)
    finally:
        await connection.close()
