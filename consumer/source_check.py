"""The definition checked against the source database itself, before any work starts.

A definition can be well formed and still name a column that is not there: a trigger on
``customer_idd`` makes nothing dirty, a mapping of ``created_att`` sends null to Reach for every
record. Both pass YAML validation and fail silently at run time, so ``validate --source`` and
``run`` (the router, at startup) ask the database: every trigger table and its id column exist,
one table is declared with one replica identity, every query runs (with no ids) and returns the
key, the tenant and every mapped column, each in a type its format can read, every group rule and
lookup runs. Read-only, one statement at a time (autocommit), so one failure does not hide the
next. Every problem is a ``path: reason`` line, for DefinitionError to place in the file.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from consumer.config import FieldMapping, Resource, SyncDefinition
from consumer.config_file import located
from consumer.errors import Retryable
from consumer.sink.recompute import recompute_query

__all__ = ["check_source", "source_problems"]

CONNECT_TIMEOUT_S = 10

# pg_type.typcategory each format is meant for: N numeric, B boolean, D date/time. The formats
# also read digit or ISO strings (projection.py), but a text column mapped to a number or a time
# is far more often the wrong column than a string of digits: cast it in the query to say so.
# Formats not named here (raw, string) read anything.
_READABLE = {
    "integer": {"N"},
    "decimal_cents": {"N"},
    "boolean": {"B", "N"},
    "datetime": {"D"},
    "date": {"D"},
}
_COLUMNS_SQL = (
    "SELECT a.attname FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) "
    "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)
_PRIMARY_KEY_SQL = (
    "SELECT a.attname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a "
    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
    "WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND i.indisprimary"
)
_TYPES_SQL = "SELECT oid::int, typname, typcategory FROM pg_catalog.pg_type WHERE oid = ANY(%s)"


def check_source(definition: SyncDefinition, path: Path) -> None:
    """Raise DefinitionError placing every problem in ``path``'s lines; Retryable when the
    database cannot be reached."""
    source = definition.source.database
    options = (
        f"-c statement_timeout={source.statement_timeout_ms} -c default_transaction_read_only=on"
    )
    try:
        conn = psycopg.connect(
            source.dsn.get_secret_value(),
            autocommit=True,
            options=options,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.OperationalError as exc:
        raise Retryable(f"source database unavailable for the definition check: {exc}") from exc
    with conn:
        problems = source_problems(definition, conn)
    if problems:
        raise located(path, problems)


def source_problems(definition: SyncDefinition, conn: psycopg.Connection[Any]) -> list[str]:
    """Every problem the database shows in ``definition``, as ``path: reason`` lines; Retryable
    when the database cannot be reached."""
    try:
        problems = _replica_declarations(conn, definition)
        for name, resource in definition.resources.items():
            problems += _triggers(conn, name, resource)
            problems += _query(conn, name, resource)
    except psycopg.OperationalError as exc:
        raise Retryable(f"source database unavailable for the definition check: {exc}") from exc
    return problems


def _replica_declarations(conn: psycopg.Connection[Any], definition: SyncDefinition) -> list[str]:
    """One table, one replica identity: a trigger on a foreign key declaring ``default`` beside
    one declaring ``full`` ignores the before images the other relies on (a trigger on the
    table's own key reads the event key and is right either way)."""
    declared: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for name, resource in definition.resources.items():
        for i, trigger in enumerate(resource.triggers):
            declared[trigger.table][trigger.replica_identity].append(
                (f"resources.{name}.triggers[{i}]", trigger.id)
            )
    problems = []
    for table, by_identity in declared.items():
        if len(by_identity) < 2:
            continue
        schema, name = table.split(".", 1)
        key = {row[0] for row in conn.execute(_PRIMARY_KEY_SQL, (schema, name)).fetchall()}
        full = ", ".join(where for where, _ in by_identity["full"])
        problems += [
            f"{where}.replica_identity: {table} is declared full by {full} and default here, "
            f"for {column}, not its key: before images would be ignored here; declare one "
            "replica identity per table"
            for where, column in by_identity["default"]
            if column not in key
        ]
    return problems


def _triggers(conn: psycopg.Connection[Any], name: str, resource: Resource) -> list[str]:
    problems = []
    for i, trigger in enumerate(resource.triggers):
        where = f"resources.{name}.triggers[{i}]"
        schema, table = trigger.table.split(".", 1)
        columns = [row[0] for row in conn.execute(_COLUMNS_SQL, (schema, table)).fetchall()]
        if not columns:
            problems.append(f"{where}.table: no table {trigger.table} in the source database")
            continue
        if trigger.id not in columns:
            problems.append(
                f"{where}.id: {trigger.table} has no column {trigger.id} "
                f"(it has {', '.join(columns)})"
            )
        if trigger.lookup is not None:
            reason = _fails(conn, sql.SQL(trigger.lookup))
            if reason is not None:
                problems.append(f"{where}.lookup: the lookup fails: {reason}")
    return problems


def _query(conn: psycopg.Connection[Any], name: str, resource: Resource) -> list[str]:
    where = f"resources.{name}"
    base = sql.SQL(resource.query.strip().rstrip(";"))
    described = _describe(conn, base)
    if isinstance(described, str):
        return [f"{where}.query: the query fails: {described}"]
    problems = []
    for field, column in (("key", resource.key), ("tenant", resource.tenant)):
        if column not in described:
            problems.append(f"{where}.{field}: {_missing(column, described)}")
    for field, mapping in resource.mapping.items():
        problem = _mapped(mapping, described)
        if problem is not None:
            problems.append(f"{where}.mapping.{field}.column: {problem}")
    if resource.groups is not None and isinstance(_describe(conn, recompute_query(resource)), str):
        for i, rule in enumerate(resource.groups.rules):
            one = sql.SQL("SELECT ({}) FROM ({}) AS q").format(
                sql.SQL(rule.when),
                base,
            )
            reason = _fails(conn, one)
            if reason is not None:
                problems.append(f"{where}.groups.rules[{i}].when: the rule fails: {reason}")
    return problems


def _describe(
    conn: psycopg.Connection[Any], query: sql.Composable
) -> dict[str, tuple[str, str]] | str:
    """The query's result columns as name → (type name, type category), or why it fails."""
    try:
        cursor = conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(query), {"ids": []})
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        return _reason(exc)
    description = cursor.description or []
    oids = [column.type_code for column in description]
    types = {row[0]: (row[1], row[2]) for row in conn.execute(_TYPES_SQL, (oids,)).fetchall()}
    return {column.name: types.get(column.type_code, ("unknown", "X")) for column in description}


def _mapped(mapping: FieldMapping, columns: dict[str, tuple[str, str]]) -> str | None:
    if mapping.column not in columns:
        return _missing(mapping.column, columns)
    type_name, category = columns[mapping.column]
    readable = _READABLE.get(mapping.format)
    if readable is not None and category not in readable:
        return f"format {mapping.format} cannot read {mapping.column}, a {type_name}"
    return None


def _missing(column: str, columns: dict[str, tuple[str, str]]) -> str:
    return f"the query returns no column {column} (it returns {', '.join(columns)})"


def _fails(conn: psycopg.Connection[Any], query: sql.Composable) -> str | None:
    try:
        conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(query), {"ids": []})
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        return _reason(exc)
    return None


def _reason(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary or str(exc)).strip()
