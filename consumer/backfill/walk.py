"""Walking a resource's entity ids from the source database, one keyset page at a time.

Keyset (``WHERE id > last ORDER BY id LIMIT n``), never ``OFFSET``: each page costs the same
however deep the walk is, and the last id of a page is all a checkpoint needs to resume. The ids
come from ``backfill.ids_query`` or, by default, from the primary key of the trigger table that
names the resource by its own key (the catalog tells which). A scope with tenants, ``--where``
or ``--since`` keeps of each page only the ids the resource's own query returns under those
conditions, so the filters mean what they would mean in that query's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from consumer.backfill.scope import BackfillScope
from consumer.config import DatabaseSource, Resource, SyncDefinition
from consumer.errors import ConfigurationError, Retryable
from consumer.router.dirty import EntityId

__all__ = ["IdWalker", "Page", "checked_walkers", "connect", "ids_query"]

CONNECT_TIMEOUT_S = 10

_PRIMARY_KEY_SQL = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
    "FROM pg_catalog.pg_index i "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
    "WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND i.indisprimary"
)


@dataclass(frozen=True, slots=True)
class Page:
    """``walked``: ids read from the walk (what progress counts); ``ids``: those in scope;
    ``last``: where the next page starts, None once the walk is over."""

    walked: int
    ids: list[EntityId]
    last: EntityId | None


async def connect(source: DatabaseSource) -> psycopg.AsyncConnection[Any]:
    """A read-only connection with the definition's statement timeout, as recomputes use."""
    options = (
        f"-c statement_timeout={source.statement_timeout_ms} -c default_transaction_read_only=on"
    )
    try:
        return await psycopg.AsyncConnection.connect(
            source.dsn.get_secret_value(),
            autocommit=True,
            options=options,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.OperationalError as exc:
        raise Retryable(f"source database unavailable: {exc}") from exc


async def ids_query(
    conn: psycopg.AsyncConnection[Any], name: str, resource: Resource
) -> sql.Composable:
    """The resource's page query: ``backfill.ids_query``, or one built on the primary key of
    the first trigger table whose key is the trigger's ``id`` column."""
    if resource.backfill.ids_query is not None:
        return sql.SQL(_literal(resource.backfill.ids_query))
    for trigger in resource.triggers:
        if trigger.lookup is not None:
            continue
        schema, table = trigger.table.split(".", 1)
        cursor = await _execute(conn, _PRIMARY_KEY_SQL, (schema, table), f"resources.{name}")
        key = await cursor.fetchall()
        if len(key) == 1 and key[0][0] == trigger.id:
            column, type_name = sql.Identifier(trigger.id), sql.SQL(key[0][1])
            return sql.SQL(
                "SELECT {col} FROM {table} WHERE %(after)s::{type} IS NULL OR {col} > "
                "%(after)s::{type} ORDER BY {col} LIMIT %(limit)s"
            ).format(col=column, table=sql.Identifier(schema, table), type=type_name)
    raise ConfigurationError(
        f"resources.{name}: no trigger table names the entity by its own primary key; set "
        "backfill.ids_query",
        scope=f"resources.{name}.backfill",
    )


async def checked_walkers(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition, scope: BackfillScope
) -> dict[str, IdWalker]:
    """A walker per resource of ``scope``, each checked (``check``) before any is used, so a
    broken query fails before anything is written."""
    walkers = {}
    for name in scope.resources:
        resource = definition.resources[name]
        walker = IdWalker(
            conn,
            name,
            resource,
            await ids_query(conn, name, resource),
            tenants=scope.tenants,
            where=scope.where,
            since_ms=scope.since_ms,
        )
        await walker.check()
        walkers[name] = walker
    return walkers


class IdWalker:
    """Pages of one resource's ids in scope, after a given id."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        name: str,
        resource: Resource,
        page_query: sql.Composable,
        *,
        tenants: Sequence[str] = (),
        where: str | None = None,
        since_ms: int | None = None,
    ) -> None:
        self._conn = conn
        self._name = name
        self._resource = resource
        self._page_query = page_query
        self._filter = _filter_query(resource, tenants, where, since_ms)
        self._params: dict[str, Any] = {"tenants": list(tenants), "since_ms": since_ms}

    async def check(self) -> None:
        """Run the page and filter queries on nothing, so that a broken ``ids_query`` or
        ``--where`` fails before anything is made dirty or checkpointed."""
        await self._run(self._page_query, {"after": None, "limit": 0}, "backfill.ids_query")
        if self._filter is not None:
            await self._run(self._filter, {**self._params, "ids": []}, "--where/--tenant/--since")

    async def total(self) -> int | None:
        """How many ids the walk reads in all (before filters): the progress total. None when
        counting them runs over the statement timeout (a big table): the walk goes on without
        an ETA rather than never starting."""
        counted = sql.SQL("SELECT count(*) FROM ({page}) AS walked").format(page=self._page_query)
        try:
            rows = await self._run(counted, {"after": None, "limit": None}, "backfill.ids_query")
        except _TooSlow:
            return None
        return int(rows[0][0])

    async def page(self, after: EntityId | None, limit: int) -> Page:
        rows = await self._run(
            self._page_query,
            {"after": None if after is None else str(after), "limit": limit},
            "backfill.ids_query",
        )
        walked = [_entity_id(row[0]) for row in rows if row[0] is not None]
        last = walked[-1] if len(rows) == limit and walked else None
        if self._filter is None or not walked:
            return Page(len(walked), walked, last)
        kept = await self._run(
            self._filter, {**self._params, "ids": [str(i) for i in walked]}, "--where"
        )
        in_scope = {str(row[0]) for row in kept}
        return Page(len(walked), [i for i in walked if str(i) in in_scope], last)

    async def tenants_of(self, ids: Sequence[EntityId]) -> list[tuple[EntityId, str]]:
        """The ids in scope among ``ids``, with their tenant (``--dry-run``)."""
        if not ids:
            return []
        query = self._filter or _classify_query(self._resource)
        rows = await self._run(query, {**self._params, "ids": [str(i) for i in ids]}, "--where")
        tenant_of = {str(row[0]): str(row[1]) for row in rows}
        return [(i, tenant_of[str(i)]) for i in ids if str(i) in tenant_of]

    async def _run(
        self, query: sql.Composable, params: dict[str, Any], what: str
    ) -> list[tuple[Any, ...]]:
        cursor = await _execute(self._conn, query, params, f"resources.{self._name}: {what}")
        return await cursor.fetchall()


def _filter_query(
    resource: Resource, tenants: Sequence[str], where: str | None, since_ms: int | None
) -> sql.Composable | None:
    conditions: list[sql.Composable] = []
    if tenants:
        conditions.append(
            sql.SQL("q.{tenant}::text = ANY(%(tenants)s)").format(
                tenant=sql.Identifier(resource.tenant)
            )
        )
    if where is not None:
        # Run with parameters, so a literal % (LIKE 'a%') must reach psycopg doubled.
        where_sql = sql.SQL(_literal(where.replace("%", "%%")))
        conditions.append(sql.SQL("({})").format(where_sql))
    if since_ms is not None and resource.backfill.since_column is not None:
        conditions.append(
            sql.SQL("q.{column} >= to_timestamp(%(since_ms)s::bigint / 1000.0)").format(
                column=sql.Identifier(resource.backfill.since_column)
            )
        )
    if not conditions:
        return None
    return sql.SQL("{select} WHERE {conditions}").format(
        select=_classify_query(resource), conditions=sql.SQL(" AND ").join(conditions)
    )


def _classify_query(resource: Resource) -> sql.Composable:
    """Each id the resource query returns, with its tenant."""
    return sql.SQL("SELECT q.{key}, q.{tenant}::text FROM ({query}) AS q").format(
        key=sql.Identifier(resource.key),
        tenant=sql.Identifier(resource.tenant),
        query=sql.SQL(_literal(resource.query)),
    )


async def _execute(
    conn: psycopg.AsyncConnection[Any], query: Any, params: Any, what: str
) -> psycopg.AsyncCursor[Any]:
    """Run a query; the database unreachable is Retryable, any other error a configuration
    error naming ``what`` with the database's message."""
    try:
        return await conn.execute(query, params)
    except psycopg.errors.QueryCanceled as exc:
        raise _TooSlow(f"{what}: the query ran over statement_timeout_ms: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise Retryable(f"{what}: source database unavailable: {exc}") from exc
    except psycopg.Error as exc:
        raise ConfigurationError(f"{what}: {exc}".strip()) from exc


class _TooSlow(Retryable):
    """A query cancelled by the statement timeout: the database answers, slowly."""


def _entity_id(value: Any) -> EntityId:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)


def _literal(text: str) -> LiteralString:
    """SQL the partner wrote (the definition, ``--where``): trusted as the definition is, and
    run read-only."""
    return text  # mypy does not check LiteralString; this names the trust
