"""Recompute: read the current state of a window's entities from the source database.

One query per resource per window, ``WHERE key = ANY(%(ids)s)``: the definition's query, wrapped
so that each group rule becomes a boolean column evaluated by the database at the same instant
as the rest of the row. An id with no row in the result is an entity that no longer exists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from consumer.config import DatabaseSource, Resource
from consumer.dirty import EntityId
from consumer.errors import ConfigurationError, Retryable
from consumer.projection import GROUP_COLUMN_PREFIX

__all__ = ["Recomputed", "SourceDatabase", "recompute_query"]

# How long the tenant list of a resource is reused; it is only needed for deletes whose tenant
# the last-sent store lost, and tenants come and go rarely.
TENANTS_CACHE_S = 60.0
# Seconds to wait for a pooled connection before the window is retried later: long enough for a
# busy pool, short enough that a database outage shows up as retries rather than a stuck window.
POOL_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Recomputed:
    """Rows by entity id (as the key column returns it, stringified), and the ids with no row."""

    rows: dict[str, dict[str, Any]]
    gone: list[EntityId]


@contextmanager
def _classified(what: str) -> Iterator[None]:
    """Translate psycopg's errors into ours, once for every query this module runs."""
    try:
        yield
    except (psycopg.ProgrammingError, psycopg.DataError) as exc:
        # A wrong query, or ids of the wrong type for it: no retry will fix that.
        raise ConfigurationError(
            f"{what} fails: {exc.diag.message_primary}", scope="definition"
        ) from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        # Includes statement timeouts (QueryCanceled) and lost connections.
        raise Retryable(f"source database unavailable: {type(exc).__name__}") from exc


def _trusted(text: str) -> sql.SQL:
    """SQL written by the partner in the validated sync definition, run on their own replica
    with read-only transactions; it is configuration, not input, so it is not parameterised."""
    return sql.SQL(text)


def recompute_query(resource: Resource) -> sql.SQL | sql.Composed:
    """The resource's query with one ``__group_<name>`` column per group rule."""
    base = _trusted(resource.query.strip().rstrip(";"))
    if resource.groups is None:
        return base
    columns = sql.SQL(", ").join(
        sql.SQL("({}) AS {}").format(
            _trusted(rule.when), sql.Identifier(GROUP_COLUMN_PREFIX + rule.name)
        )
        for rule in resource.groups.rules
    )
    return sql.SQL("SELECT q.*, {} FROM ({}) AS q").format(columns, base)


class SourceDatabase:
    """The source database behind an async pool; read-only, bounded statement time."""

    def __init__(self, source: DatabaseSource, pool_timeout_s: float = POOL_TIMEOUT_S) -> None:
        options = (
            f"-c statement_timeout={source.statement_timeout_ms}"
            " -c default_transaction_read_only=on"
        )
        self._tenants: dict[str, tuple[float, list[str]]] = {}
        self._pool = AsyncConnectionPool(
            source.dsn.get_secret_value(),
            min_size=1,
            max_size=source.pool_size,
            kwargs={"autocommit": True, "options": options},
            open=False,
            timeout=pool_timeout_s,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def recompute(self, resource: Resource, ids: Sequence[EntityId]) -> Recomputed:
        """Fetch the rows for ``ids``; Retryable when the database is unreachable or busy,
        ConfigurationError when the query itself is wrong (no retry will fix it)."""
        query = recompute_query(resource)
        with _classified(f"the query of {resource.reach_schema!r}"):
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                # As text: a window can hold one entity's id as 7 (from an event) and another's
                # as "8" (a dead letter, a replay), and psycopg cannot send a mixed list;
                # Postgres casts the untyped text[] to the key column's type itself.
                await cur.execute(query, {"ids": [str(i) for i in ids]})
                fetched = await cur.fetchall()
        rows: dict[str, dict[str, Any]] = {}
        for row in fetched:
            rows[str(row[resource.key])] = row
        gone = [i for i in ids if str(i) not in rows]
        return Recomputed(rows=rows, gone=gone)

    async def tenants(self, resource: Resource) -> list[str]:
        """Every tenant of the resource (its tenants_query), cached for TENANTS_CACHE_S."""
        if resource.tenants_query is None:
            return []
        now = time.monotonic()
        cached = self._tenants.get(resource.tenants_query)
        if cached is not None and now - cached[0] < TENANTS_CACHE_S:
            return cached[1]
        try:
            async with self._pool.connection() as conn, conn.cursor() as cur:
                await cur.execute(_trusted(resource.tenants_query))
                tenants = [str(row[0]) for row in await cur.fetchall() if row[0] is not None]
        except (psycopg.ProgrammingError, psycopg.DataError) as exc:
            raise ConfigurationError(
                f"the tenants_query of {resource.reach_schema!r} fails: {exc.diag.message_primary}",
                scope="definition",
            ) from exc
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise Retryable(f"source database unavailable: {type(exc).__name__}") from exc
        self._tenants[resource.tenants_query] = (now, tenants)
        return tenants
