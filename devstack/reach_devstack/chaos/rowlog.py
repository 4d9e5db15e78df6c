"""A per-row commit-order log of the shop's tables: the chaos checks' witness of the source.

The sandbox's history says in which order Reach applied an entity's states; judging that order
needs the order in which the entity's row took its states, from a witness other than the
Debezium topics reach-sync itself reads. The database writes it: an AFTER INSERT/UPDATE/DELETE
FOR EACH ROW trigger appends each row change to ``chaos.row_log``, inside the writing
transaction (a rolled-back change takes its entry with it).

Order. ``seq`` is drawn from a sequence when the trigger fires, at the end of the changing
statement, while the transaction holds the row's lock; the lock is held until commit or
rollback. A second writer of the same row waits for that lock, so its trigger fires, and draws
a larger ``seq``, only after the first writer committed (or rolled back). So for one row, ``seq``
order is the order in which its changes committed. Across rows it is not: transactions changing
different rows draw their numbers when they change them and commit in either order, so ``seq``
is not a global commit order and the checks never compare seqs of different rows. Several
changes of one row in one transaction share its ``xid``; only the last was ever visible to
others (reach-sync's recompute included), so ``logged_states`` keeps only that one.

Not captured. The local stack's Debezium creates its publication for the captured tables only
(``publication.autocreate.mode=filtered`` with ``table.include.list``: debezium.py) and the
shop's definition reads only the shop's topics; the log lives in a schema of its own, ``chaos``,
so that even a publication for the tables of schema ``public`` would leave it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.adapt import Transformer

__all__ = [
    "DEFAULT_TABLES",
    "LOG_TABLE",
    "LoggedState",
    "Unloadable",
    "install_row_log",
    "last_log_seq",
    "logged_states",
    "qualified",
    "source_changes",
    "table_columns",
]

LOG_SCHEMA = "chaos"
LOG_TABLE = f"{LOG_SCHEMA}.row_log"
DEFAULT_TABLES = ("customers", "transactions")
# Operations in the log: a row's state when the log was installed, then its changes.
SNAPSHOT, INSERT, UPDATE, DELETE = "S", "I", "U", "D"

_SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.row_log (
    seq       bigserial PRIMARY KEY,
    tbl       text NOT NULL,
    id        text NOT NULL,
    op        char(1) NOT NULL CHECK (op IN ('S', 'I', 'U', 'D')),
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    row       jsonb
);
CREATE INDEX IF NOT EXISTS row_log_row_idx ON chaos.row_log (tbl, id, seq);
CREATE OR REPLACE FUNCTION chaos.log_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tbl text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    v_key text := TG_ARGV[0];
    v_old text;
    v_new jsonb;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        v_old := to_jsonb(OLD) ->> v_key;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO chaos.row_log (tbl, id, op, row) VALUES (v_tbl, v_old, 'D', NULL);
        RETURN NULL;
    END IF;
    v_new := to_jsonb(NEW);
    IF TG_OP = 'UPDATE' AND v_old IS DISTINCT FROM v_new ->> v_key THEN
        -- The key changed: the old entity is gone.
        INSERT INTO chaos.row_log (tbl, id, op, row) VALUES (v_tbl, v_old, 'D', NULL);
    END IF;
    INSERT INTO chaos.row_log (tbl, id, op, row)
        VALUES (v_tbl, v_new ->> v_key, left(TG_OP, 1), v_new);
    RETURN NULL;
END
$$;
"""


class Unloadable:
    """A logged value the driver cannot load (an ``infinity`` timestamp): reach-sync cannot load
    it either, and dead-letters its entity when its query reads it. No format takes it: text
    refuses to be made of it, JSON to carry it, so a projection of it is a BadRecord."""

    def __str__(self) -> str:
        raise ValueError("a value the driver cannot load")

    def __repr__(self) -> str:
        return "<unloadable>"


UNLOADABLE = Unloadable()


@dataclass(frozen=True, slots=True)
class LoggedState:
    """One committed state of a row: its log ``seq``, the operation, and the row as the table's
    row type loads it (None after a delete). ``logged_at`` (epoch seconds) is when its change
    was made, before its commit: for one row, no later change is logged before that commit."""

    seq: int
    op: str
    row: dict[str, Any] | None
    logged_at: float = 0.0


def qualified(table: str) -> tuple[str, str]:
    """``customers`` or ``public.customers`` as (schema, table)."""
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def install_row_log(dsn: str, tables: Sequence[str] = DEFAULT_TABLES, *, key: str = "id") -> None:
    """Create the log and its triggers on ``tables`` (keyed by column ``key``), in one transaction
    that also logs every row's current state (op ``S``). The tables are locked against writers
    meanwhile, so each change is either in that snapshot or logged by its trigger. Installing
    again keeps the log, replaces the triggers and logs the current states once more."""
    names = [qualified(t) for t in tables]
    with psycopg.connect(dsn) as conn:
        conn.execute(_SCHEMA_SQL)
        conn.execute(
            sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(s, t) for s, t in names)
            )
        )
        for schema, table in names:
            conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER chaos_row_log AFTER INSERT OR UPDATE OR DELETE"
                    " ON {} FOR EACH ROW EXECUTE FUNCTION chaos.log_row({})"
                ).format(sql.Identifier(schema, table), sql.Literal(key))
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO chaos.row_log (tbl, id, op, row)"
                    " SELECT {name}, to_jsonb(t) ->> {key}, 'S', to_jsonb(t)"
                    " FROM {table} t ORDER BY t.{column}"
                ).format(
                    name=sql.Literal(f"{schema}.{table}"),
                    key=sql.Literal(key),
                    table=sql.Identifier(schema, table),
                    column=sql.Identifier(key),
                )
            )


def source_changes(dsn: str) -> int:
    """How many row changes were logged since the log was installed (inserts, updates, deletes,
    no-op updates included; the install's snapshot is not a change)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM chaos.row_log WHERE op <> 'S'").fetchone()
    return int(row[0]) if row else 0


def last_log_seq(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM chaos.row_log").fetchone()
    return int(row[0]) if row else 0


def table_columns(dsn: str, table: str) -> set[str]:
    schema, name = qualified(table)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s",
            (schema, name),
        ).fetchall()
    return {str(r[0]) for r in rows}


def logged_states(dsn: str, table: str) -> dict[str, list[LoggedState]]:
    """Every logged state of ``table``'s rows, by row key (as text), each row's in commit order.

    Rows are loaded through the table's own row type (``jsonb_populate_record``), so each value
    has the Python type psycopg gives a query of the table (datetime, Decimal, bool...), as
    reach-sync's recompute sees it. Of one transaction's changes to a row, the last is kept.
    """
    schema, name = qualified(table)
    query = sql.SQL(
        "SELECT l.seq, l.id, l.op, l.xid::text, extract(epoch FROM l.logged_at)::float8, r.*"
        " FROM chaos.row_log l"
        " LEFT JOIN LATERAL jsonb_populate_record(NULL::{table}, l.row) r ON l.row IS NOT NULL"
        " WHERE l.tbl = %s ORDER BY l.id, l.seq"
    ).format(table=sql.Identifier(schema, name))
    found: dict[str, list[LoggedState]] = {}
    last_xid: dict[str, str] = {}
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query, (f"{schema}.{name}",))
        for seq, key, op, xid, logged_at, *values in _each_value_loaded(cur):
            row = None if op == DELETE else dict(zip(_columns(cur), values, strict=True))
            states = found.setdefault(key, [])
            state = LoggedState(int(seq), str(op), row, float(logged_at))
            if states and last_xid[key] == xid and op != SNAPSHOT:
                states[-1] = state  # the same transaction: only its last change was visible
            else:
                states.append(state)
            last_xid[key] = xid
    return found


def _columns(cur: psycopg.Cursor[Any]) -> list[str]:
    return [c.name for c in (cur.description or [])][5:]


def _each_value_loaded(cur: psycopg.Cursor[Any]) -> list[list[Any]]:
    """The fetched rows, each value loaded alone: one the driver refuses is ``UNLOADABLE``
    (fetching the row whole would fail the whole read, as consumer/sink/recompute.py knows)."""
    result, description = cur.pgresult, cur.description
    if result is None or description is None:
        return []
    transformer = Transformer(cur)
    loaders = [
        transformer.get_loader(column.type_code, pq.Format(result.fformat(number)))
        for number, column in enumerate(description)
    ]
    rows: list[list[Any]] = []
    for position in range(result.ntuples):
        values: list[Any] = []
        for number, loader in enumerate(loaders):
            raw = result.get_value(position, number)
            try:
                values.append(None if raw is None else loader.load(raw))
            except (psycopg.DataError, ValueError):
                values.append(UNLOADABLE)
        rows.append(values)
    return rows
