"""Recompute: read the current state of a window's entities from the source database.

One query per resource per window, ``WHERE key = ANY(%(ids)s)``, each group rule a boolean column
evaluated at the same instant as the row; an id with no row is an entity that no longer exists.
A row that cannot be read affects its own entity alone: it is ``failed`` (dead-lettered), never
``gone`` (that would delete it from Reach), found row by row (the driver's errors) or by querying
the ids again in halves (the server's data errors). Errors of the query as such stay
configuration errors. Reasons name the column and the message, never the value (deadletter.py's
rule). The long story: docs/design.md, "Unreadable source rows".
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors, pq, sql
from psycopg.adapt import Transformer
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from consumer.config import DatabaseSource, Resource
from consumer.errors import BadRecord, ConfigurationError, Retryable
from consumer.router.dirty import EntityId
from consumer.sink.projection import GROUP_COLUMN_PREFIX, WITHHELD

__all__ = ["Recomputed", "SourceDatabase", "UnloadableRow", "recompute_query"]

# How long the tenant list of a resource is reused; it is only needed for deletes whose tenant
# the last-sent store lost, and tenants come and go rarely.
TENANTS_CACHE_S = 60.0
# Seconds to wait for a pooled connection before the window is retried later: long enough for a
# busy pool, short enough that a database outage shows up as retries rather than a stuck window.
POOL_TIMEOUT_S = 10.0

# Server errors that may belong to some rows only (module docstring).
_ROW_ERRORS = (psycopg.DataError, errors.CardinalityViolation)
# What the driver's message quotes (psycopg's loaders quote the text they could not load), not
# an apostrophe ("can't parse").
_DRIVER_QUOTE = re.compile(r"(?<!\w)'([^']+)'(?!\w)")
# The input a server message quotes ('invalid input syntax for type bigint: "..."'); an
# encoding's name is quoted too and kept.
_QUOTED_INPUT = re.compile(r'(?<!encoding )"[^"]*"')


class UnloadableRow(BadRecord):
    """An entity whose source row cannot be read: a value the driver cannot load, or one the
    server cannot compute for that row."""


@dataclass(frozen=True, slots=True)
class Recomputed:
    """Rows by entity id (as the key column returns it, stringified), the ids with no row, and
    the ids whose row cannot be read, with why (to be dead-lettered, never deleted)."""

    rows: dict[str, dict[str, Any]]
    gone: list[EntityId]
    failed: dict[str, BadRecord] = field(default_factory=dict)


class _RowFailure(Exception):
    """A failure that may be due to some of the queried ids only; its message holds no value."""


@dataclass(slots=True)
class _Fetched:
    rows: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, BadRecord] = field(default_factory=dict)

    def add(self, other: _Fetched) -> None:
        self.rows += other.rows
        self.failed.update(other.failed)


def _message(exc: BaseException) -> str:
    """The server's primary message, or the client's own (a client-side error has no diag)."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    return primary or str(exc) or type(exc).__name__


@contextmanager
def _classified(what: str) -> Iterator[None]:
    """Translate psycopg's errors into ours, once for every query this module runs."""
    try:
        yield
    except (psycopg.ProgrammingError, psycopg.DataError) as exc:
        # A wrong query: no retry will fix that.
        raise ConfigurationError(f"{what} fails: {_message(exc)}", scope="definition") from exc
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


def _server_reason(exc: psycopg.Error) -> str:
    message = _QUOTED_INPUT.sub(f'"{WITHHELD}"', _message(exc))
    return f"{message} (SQLSTATE {exc.sqlstate})" if exc.sqlstate else message


def _where(resource: Resource, column: str) -> str:
    fields = [repr(name) for name, m in resource.mapping.items() if m.column == column]
    return f"field {', '.join(fields)} (column {column!r})" if fields else f"column {column!r}"


def _withheld(message: str, text: str) -> str:
    """The driver's ``message`` with every quote of the ``text`` it could not load withheld."""

    def quoted(quote: re.Match[str]) -> str:
        return WITHHELD if quote[1] in text else quote[0]

    return _DRIVER_QUOTE.sub(quoted, message.replace(repr(text), WITHHELD))


def _unloadable(
    cur: psycopg.AsyncCursor[dict[str, Any]],
    resource: Resource,
    position: int,
    row_error: Exception,
) -> tuple[str, str]:
    """The entity id of a fetched row that cannot be loaded, and why: each column of it is
    loaded alone, as the driver would. _RowFailure when its key cannot be told."""
    result, description = cur.pgresult, cur.description
    if result is None or description is None:
        raise _RowFailure(_message(row_error)) from row_error
    transformer = Transformer(cur)
    values: dict[str, Any] = {}
    reasons: list[str] = []
    for number, column in enumerate(description):
        raw = result.get_value(position, number)
        if raw is None:
            values.setdefault(column.name, None)
            continue
        loader = transformer.get_loader(column.type_code, pq.Format(result.fformat(number)))
        try:
            values.setdefault(column.name, loader.load(raw))
        except Exception as exc:
            # The driver quotes the text it could not load, or the part of it an array's
            # element begins with ('10000-01-01}'); withhold every quote of it.
            message = _withheld(_message(exc), bytes(raw).decode(errors="replace"))
            reasons.append(f"{_where(resource, column.name)}: {message}")
    reason = "; ".join(reasons) or _message(row_error)
    key = values.get(resource.key)
    if key is None:
        raise _RowFailure(reason) from row_error
    return str(key), f"the source row cannot be loaded: {reason}"


async def _load_each(cur: psycopg.AsyncCursor[dict[str, Any]], resource: Resource) -> _Fetched:
    """Load the fetched rows one at a time; a row that fails is its entity's failure."""
    into = _Fetched()
    for position in range(cur.pgresult.ntuples if cur.pgresult is not None else 0):
        await cur.scroll(position, mode="absolute")
        try:
            row = await cur.fetchone()
        except Exception as exc:
            entity_id, reason = _unloadable(cur, resource, position, exc)
            into.failed[entity_id] = UnloadableRow(reason)
            continue
        if row is not None:
            into.rows.append(row)
    return into


class SourceDatabase:
    """The source database behind an async pool; read-only, bounded statement time."""

    def __init__(self, source: DatabaseSource, pool_timeout_s: float = POOL_TIMEOUT_S) -> None:
        options = (
            f"-c statement_timeout={source.statement_timeout_ms}"
            " -c default_transaction_read_only=on"
        )
        self._tenants: dict[str, tuple[float, list[str]]] = {}
        # Recompute queries run (isolating an unreadable row runs more than one per window).
        self.queries = 0
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
        ConfigurationError when the query itself is wrong (no retry will fix it). A row that
        cannot be read is reported in ``failed``, for its entity alone (module docstring)."""
        query = recompute_query(resource)
        what = f"the query of {resource.reach_schema!r}"
        with _classified(what):
            fetched = await self._isolating(query, resource, list(ids), what)
        rows: dict[str, dict[str, Any]] = {}
        for row in fetched.rows:
            rows[str(row[resource.key])] = row
        failed = fetched.failed
        gone = [i for i in ids if str(i) not in rows and str(i) not in failed]
        return Recomputed(rows=rows, gone=gone, failed=failed)

    async def _isolating(
        self, query: sql.SQL | sql.Composed, resource: Resource, ids: list[EntityId], what: str
    ) -> _Fetched:
        """One query; when it fails in a way that may be some rows' only, the query once with
        no ids (no row is computed then: failing still, it is wrong as such), then halves."""
        try:
            return await self._fetch(query, resource, ids)
        except _RowFailure as failure:
            try:
                await self._fetch(query, resource, [])
            except _RowFailure as exc:
                raise ConfigurationError(f"{what} fails: {exc}", scope="definition") from exc
            return await self._halves(query, resource, ids, failure, what)

    async def _halves(
        self,
        query: sql.SQL | sql.Composed,
        resource: Resource,
        ids: list[EntityId],
        failure: _RowFailure,
        what: str,
    ) -> _Fetched:
        """``ids`` failed with ``failure``: fetch each half, and halve again what fails, until
        each failing id stands alone (about 2·log2(n) queries per bad row)."""
        if len(ids) == 1:
            reason = f"{what} fails for this entity: {failure}"
            return _Fetched(failed={str(ids[0]): UnloadableRow(reason)})
        found = _Fetched()
        half = len(ids) // 2
        for part in (ids[:half], ids[half:]):
            try:
                found.add(await self._fetch(query, resource, part))
            except _RowFailure as exc:
                found.add(await self._halves(query, resource, part, exc, what))
        return found

    async def _fetch(
        self,
        query: sql.SQL | sql.Composed,
        resource: Resource,
        ids: list[EntityId],
    ) -> _Fetched:
        """One query: its rows, and the rows the driver cannot load."""
        self.queries += 1
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            # As text: a window can hold one entity's id as 7 (from an event) and another's
            # as "8" (a dead letter, a replay), and psycopg cannot send a mixed list;
            # Postgres casts the untyped text[] to the key column's type itself.
            try:
                await cur.execute(query, {"ids": [str(i) for i in ids]})
            except _ROW_ERRORS as exc:
                raise _RowFailure(_server_reason(exc)) from exc
            try:
                return _Fetched(rows=await cur.fetchall())
            except Exception:
                return await _load_each(cur, resource)

    async def tenants(self, resource: Resource) -> list[str]:
        """Every tenant of the resource (its tenants_query), cached for TENANTS_CACHE_S."""
        if resource.tenants_query is None:
            return []
        now = time.monotonic()
        cached = self._tenants.get(resource.tenants_query)
        if cached is not None and now - cached[0] < TENANTS_CACHE_S:
            return cached[1]
        with _classified(f"the tenants_query of {resource.reach_schema!r}"):
            async with self._pool.connection() as conn, conn.cursor() as cur:
                await cur.execute(_trusted(resource.tenants_query))
                tenants = [str(row[0]) for row in await cur.fetchall() if row[0] is not None]
        self._tenants[resource.tenants_query] = (now, tenants)
        return tenants
