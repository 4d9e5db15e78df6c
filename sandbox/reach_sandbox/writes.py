"""The rows a write leaves in SQLite: history versions, current-resource pointers, references.

Each table gets one statement per call, with all its rows in a single JSON array that SQLite
unpacks itself (``json_each``). Against ``executemany`` that is fewer Python-side bindings, and
above all one round of the database thread giving up and retaking the GIL per table instead of
one per row, which under load from the event loop is what made batches slow. SQLite keeps the
record text exactly as orjson wrote it.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from reach_sandbox.db import placeholders
from reach_sandbox.registry import SchemaDef

__all__ = [
    "CURRENT",
    "Stored",
    "VersionHead",
    "load_resources",
    "new_id",
    "point_resources",
    "update_refs",
    "write_versions",
]

# The current state of resources, joined through the pointer to their newest version.
CURRENT = (
    "SELECT r.external_id, r.id, v.data, r.created_at, r.updated_at, r.schema_id "
    "FROM resources r JOIN versions v ON v.seq = r.seq"
)
# SQLite's default limit on bound variables is 32766; lookups are chunked well below it.
_IN_CHUNK = 30000


@dataclass(slots=True)
class Stored:
    """A resource's current row and data."""

    id: str
    data: dict[str, Any]
    created_at: float
    updated_at: float


class VersionHead(NamedTuple):
    """What the history rows of one call share; a batch's rows name the batch, not the request."""

    tenant_id: str
    schema_id: str
    arrived_at: float
    applied_at: float
    batch_id: str | None
    request_id: str | None


def load_resources(
    conn: sqlite3.Connection, tenant_id: str, schema_id: str, external_ids: list[str]
) -> dict[str, Stored]:
    found: dict[str, Stored] = {}
    for start in range(0, len(external_ids), _IN_CHUNK):
        chunk = external_ids[start : start + _IN_CHUNK]
        rows = conn.execute(
            f"{CURRENT} WHERE r.tenant_id = ? AND r.schema_id = ? "
            f"AND r.external_id IN ({placeholders(len(chunk))})",
            (tenant_id, schema_id, *chunk),
        )
        for ext, rid, blob, created, updated, _sid in rows:
            found[ext] = Stored(rid, orjson.loads(blob), created, updated)
    return found


def write_versions(
    conn: sqlite3.Connection, head: VersionHead, entries: list[tuple[str, str, Any]]
) -> int:
    """Append (external id, op, state or None) history rows in order; returns the first seq."""
    first: int = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM versions").fetchone()[0]
    conn.execute(
        "INSERT INTO versions (seq, tenant_id, schema_id, external_id, op, data, arrived_at, "
        "applied_at, batch_id, request_id) SELECT ?1 + key, ?2, ?3, value ->> 0, value ->> 1, "
        "nullif(value -> 2, 'null'), ?4, ?5, ?6, ?7 FROM json_each(?8)",
        (
            first,
            head.tenant_id,
            head.schema_id,
            head.arrived_at,
            head.applied_at,
            head.batch_id,
            head.request_id,
            orjson.dumps(entries),
        ),
    )
    return first


def point_resources(
    conn: sqlite3.Connection,
    tenant_id: str,
    schema_id: str,
    rows: list[tuple[str, str, int, float, float]],
) -> None:
    """Insert or move (external id, id, seq, created, updated) current-resource pointers."""
    conn.execute(
        "INSERT INTO resources (tenant_id, schema_id, external_id, id, seq, created_at, "
        "updated_at) SELECT ?1, ?2, value ->> 0, value ->> 1, value ->> 2, value ->> 3, "
        "value ->> 4 FROM json_each(?3) WHERE true ON CONFLICT (tenant_id, schema_id, "
        "external_id) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
        (tenant_id, schema_id, orjson.dumps(rows)),
    )


def update_refs(
    conn: sqlite3.Connection,
    tenant_id: str,
    schema: SchemaDef,
    before: dict[str, Stored],
    changed: dict[str, Stored | None],
) -> None:
    """Keep the reverse-reference index in step, writing only the links that changed."""
    drop: list[tuple[str, str, str, str]] = []
    add: list[tuple[str, str, str, str, str, str]] = []
    for ext, now_state in changed.items():
        old = before.get(ext)
        for prop, dst in schema.refs.items():
            old_value = old.data.get(prop) if old else None
            new_value = now_state.data.get(prop) if now_state else None
            if old_value == new_value:
                continue
            if new_value is None:
                drop.append((tenant_id, schema.id, ext, prop))
            else:
                add.append((tenant_id, schema.id, ext, prop, dst, new_value))
    conn.executemany(
        "DELETE FROM refs WHERE tenant_id = ? AND src_schema = ? AND src_ext = ? AND field = ?",
        drop,
    )
    conn.executemany(
        "INSERT OR REPLACE INTO refs (tenant_id, src_schema, src_ext, field, dst_schema, dst_ext) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        add,
    )


_VARIANT = "89ab"
# Random bytes are drawn for this many ids at once: getrandom(2) is a system call that costs
# more than the rest of a record's write on a small VM.
_ID_POOL = 4096


class _Ids:
    """Random (version 4) uuid strings, without a system call or a ``uuid.UUID`` per id."""

    def __init__(self) -> None:
        self._hex = ""
        self._at = 0

    def new(self) -> str:
        if self._at >= len(self._hex):
            self._hex, self._at = os.urandom(16 * _ID_POOL).hex(), 0
        h, self._at = self._hex[self._at : self._at + 32], self._at + 32
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


# Only the database thread writes resources, so one pool needs no lock.
new_id = _Ids().new
