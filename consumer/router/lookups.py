"""Fan-out triggers: lookups that map a batch's changed rows to the entities they affect.

A trigger with a ``lookup`` (config.Trigger) names, in its ``id`` column, not an entity but an
input: a member whose subscriptions must be recomputed, an invoice whose subscription's member
must. The router collects a whole batch's inputs per lookup trigger and runs each lookup once
(never once per event) on one synchronous, read-only connection, since the router is a plain
thread; ``%(ids)s`` is the inputs as text, the first column of the result the entity ids.

A lookup that fails while routing (connection lost, statement timeout, a server error) raises
Retryable: the router rewinds the batch and tries again, so a trigger is delayed, never dropped.
Whether a lookup (and a resource's query) is valid SQL is decided once, at startup, by running
it with no ids: an error then is the query's own, a ConfigurationError naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from consumer.config import DatabaseSource, SyncDefinition, Trigger
from consumer.errors import ConfigurationError, Retryable
from consumer.router.dirty import EntityId
from consumer.sink.recompute import recompute_query

__all__ = ["Found", "LookupDatabase", "check_queries", "lookup_triggers"]

log = logging.getLogger(__name__)

# A source database that does not accept a connection within this is unavailable.
CONNECT_TIMEOUT_S = 10

Connect = Callable[[], "psycopg.Connection[Any]"]


@dataclass(frozen=True, slots=True)
class Found:
    """An entity a lookup returned, and the input it came from when the lookup says so (its
    optional second column), so the dirty key can carry that input's cause."""

    entity_id: EntityId
    input: str | None = None


def lookup_triggers(definition: SyncDefinition) -> dict[tuple[str, int], Trigger]:
    """Every trigger with a lookup, by (resource, position in its ``triggers``)."""
    return {
        (name, position): trigger
        for name, resource in definition.resources.items()
        for position, trigger in enumerate(resource.triggers)
        if trigger.lookup is not None
    }


def lookup_scope(resource: str, position: int) -> str:
    """Where a lookup is in the definition, as errors name it."""
    return f"resources.{resource}.triggers[{position}].lookup"


class LookupDatabase:
    """One read-only connection to the source database, opened on first use and again after
    it was lost; statements are bounded by ``statement_timeout_ms``. Not thread-safe: it
    belongs to the router's thread (or to one ``plan`` command)."""

    def __init__(self, source: DatabaseSource, connect: Connect | None = None) -> None:
        self._connect = connect or _read_only_connect(source)
        self._conn: psycopg.Connection[Any] | None = None
        # Queries run, for tests and stats: one per lookup trigger per batch.
        self.queries = 0

    def look_up(self, resource: str, position: int, lookup: str, ids: Sequence[str]) -> list[Found]:
        """The entities ``lookup`` maps ``ids`` to; Retryable on any failure (module doc)."""
        self.queries += 1
        try:
            rows = self._rows(_statement(lookup), list(ids))
        except psycopg.Error as exc:
            message = _message(exc)
            log.error("lookup %s failed: %s", lookup_scope(resource, position), message)
            raise Retryable(f"lookup {lookup_scope(resource, position)} failed: {message}") from exc
        found: dict[EntityId, Found] = {}  # an entity found through several inputs is one
        for row in rows:
            entity_id = _entity_id(row[0]) if row else None
            if entity_id is not None and entity_id not in found:
                source = str(row[1]) if len(row) > 1 and row[1] is not None else None
                found[entity_id] = Found(entity_id, source)
        return list(found.values())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = self._connect()
        return self._conn

    def _rows(self, statement: sql.SQL, ids: list[str]) -> list[tuple[Any, ...]]:
        try:
            with self._connection().cursor() as cur:
                cur.execute(statement, {"ids": ids})
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            self.close()  # lost or cancelled: the next batch starts on a fresh connection
            raise

    @contextmanager
    def _rolled_back(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction that is always rolled back, for running what is only being checked."""
        conn = self._connection()
        with conn.transaction(force_rollback=True):
            yield conn

    def problem(self, statement: sql.SQL | sql.Composed) -> str | None:
        """Why ``statement`` fails with no ids (the database's message), or None if it runs;
        Retryable when the database cannot be reached."""
        try:
            with self._rolled_back() as conn, conn.cursor() as cur:
                cur.execute(statement, {"ids": []})
                if not cur.description:
                    return "returns no column (the entity ids must be its first)"
        except psycopg.OperationalError as exc:
            self.close()
            raise Retryable(f"source database unavailable for the query check: {exc}") from exc
        except psycopg.Error as exc:
            # No id, so no row is computed: a failure now is the query's own, whatever its
            # class (syntax, a missing table or column, privileges, a write in read-only mode).
            return _message(exc)
        return None


def check_queries(definition: SyncDefinition, database: LookupDatabase) -> None:
    """Run every lookup and every resource query once with no ids, in a read-only transaction
    that is rolled back; ConfigurationError naming each that fails, and the database's reason.

    Run by the router before it reads an event: a broken lookup found while routing could only
    be retried forever, holding back every change behind it.
    """
    problems: list[tuple[str, str]] = []
    for (name, position), trigger in lookup_triggers(definition).items():
        assert trigger.lookup is not None
        reason = database.problem(_statement(trigger.lookup))
        if reason is not None:
            problems.append(
                (lookup_scope(name, position), f"the lookup on {trigger.table} fails: {reason}")
            )
    for name, resource in definition.resources.items():
        reason = database.problem(recompute_query(resource))
        if reason is not None:
            problems.append((f"resources.{name}.query", f"the query fails: {reason}"))
    if problems:
        scope = problems[0][0] if len(problems) == 1 else "resources"
        raise ConfigurationError(
            "; ".join(f"{where}: {reason}" for where, reason in problems), scope=scope
        )


def _read_only_connect(source: DatabaseSource) -> Connect:
    options = (
        f"-c statement_timeout={source.statement_timeout_ms} -c default_transaction_read_only=on"
    )

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(
            source.dsn.get_secret_value(),
            autocommit=True,
            options=options,
            connect_timeout=CONNECT_TIMEOUT_S,
        )

    return connect


def _statement(text: str) -> sql.SQL:
    """SQL from the validated sync definition, run read-only on the partner's own database:
    configuration, not input, so it is not parameterised (as recompute.py's queries)."""
    return sql.SQL(text.strip().rstrip(";"))


def _entity_id(value: Any) -> EntityId | None:
    """Ints and strings as they are (so keys equal the direct triggers'); anything else
    (a uuid, a numeric) as text, which is how recompute passes ids back anyway."""
    if value is None:
        return None
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return str(value)


def _message(exc: BaseException) -> str:
    """The server's primary message, or the client's own (a client-side error has no diag)."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    return primary or str(exc) or type(exc).__name__
