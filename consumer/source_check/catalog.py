"""The source database as the checks ask it: its catalog, and a query's result columns.

Every statement is read-only and runs alone (autocommit), so one failing does not hide the next.
A query is described by running it on nothing (``LIMIT 0``): Postgres plans it, checks every
name and type, and reads no row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "ColumnType",
    "Described",
    "before_image",
    "describe",
    "primary_key",
    "reason",
    "table_columns",
]

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
# The table's replica identity, and whether the before image it gives updates and deletes holds
# the column: always with FULL; with DEFAULT when the column is in the primary key; with USING
# INDEX when it is in that index; never with NOTHING.
_BEFORE_IMAGE_SQL = (
    "SELECT c.relreplident::text, c.relreplident = 'f' OR EXISTS ("
    " SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a"
    " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
    " WHERE i.indrelid = c.oid AND a.attname = %s"
    " AND ((c.relreplident = 'd' AND i.indisprimary)"
    " OR (c.relreplident = 'i' AND i.indisreplident)))"
    " FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text))"
)
_TYPES_SQL = (
    "SELECT c.i::int, t.typname::text, t.typcategory::text, format_type(c.type, c.mod) "
    "FROM unnest(%s::oid[], %s::int[]) WITH ORDINALITY AS c(type, mod, i) "
    "JOIN pg_catalog.pg_type t ON t.oid = c.type"
)


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A result column's type: ``name`` as pg_type says it (int8, numeric, timestamptz), its
    ``category`` (pg_type.typcategory: N numeric, S string, D date/time, ...), ``display`` as a
    person writes it, with its modifier (numeric(12,2), timestamp with time zone), and
    ``scale``: a numeric's declared scale, None when not declared (any number of digits)."""

    name: str
    category: str
    display: str
    scale: int | None = None


@dataclass(frozen=True, slots=True)
class Described:
    """A query's result columns, in order (a name may repeat)."""

    columns: tuple[tuple[str, ColumnType], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def type_of(self, name: str) -> ColumnType | None:
        return next((kind for column, kind in self.columns if column == name), None)


def describe(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    params: Mapping[str, Any] | None = None,
) -> Described | str:
    """``query``'s result columns, or why it fails (the database's message). Run on nothing,
    with ``params`` (None: run without, so a literal % in it stays one)."""
    try:
        cursor = conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(query), params)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        return reason(exc)
    description, result = cursor.description or [], cursor.pgresult
    modifiers = [result.fmod(i) if result is not None else -1 for i in range(len(description))]
    rows = conn.execute(_TYPES_SQL, ([c.type_code for c in description], modifiers)).fetchall()
    kinds = {int(row[0]) - 1: (str(row[1]), str(row[2]), str(row[3])) for row in rows}
    columns = []
    for i, column in enumerate(description):
        name, category, display = kinds.get(i, ("unknown", "X", f"type {column.type_code}"))
        columns.append((column.name, ColumnType(name, category, display, column.scale)))
    return Described(tuple(columns))


def table_columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The columns of ``schema.table``, in order; none when there is no such table."""
    return [str(row[0]) for row in conn.execute(_COLUMNS_SQL, _split(table)).fetchall()]


def primary_key(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return [str(row[0]) for row in conn.execute(_PRIMARY_KEY_SQL, _split(table)).fetchall()]


def before_image(conn: psycopg.Connection[Any], table: str, column: str) -> tuple[str, bool]:
    """``table``'s replica identity (d, n, f or i, as pg_class.relreplident) and whether the
    before images of its updates and deletes hold ``column``."""
    row = conn.execute(_BEFORE_IMAGE_SQL, (column, *_split(table))).fetchone()
    return ("d", False) if row is None else (str(row[0]), bool(row[1]))


def reason(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary or str(exc)).strip()


def _split(table: str) -> tuple[str, str]:
    schema, name = table.split(".", 1)
    return schema, name
