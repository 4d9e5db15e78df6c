"""Records parked until the resources their ``$ref`` fields name exist (docs/reach-api.md §4.5).

Only the storage lives here: which records wait, on what, until when. Applying them when their
dependencies appear is the write path's job (``store.py``), which keeps this module free of it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from reach_sandbox.db import placeholders

__all__ = ["PendingRecord", "PendingStore"]

_COLUMNS = (
    "id, tenant_id, schema_id, external_id, batch_id, record_index, kind, onconflict, data, "
    "missing, arrived_at, created_at, expires_at, request_id"
)


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """One parked record; ``missing`` lists (schema id, external id) pairs not found yet."""

    id: str
    tenant_id: str
    schema_id: str
    external_id: str
    batch_id: str
    index: int
    kind: str
    onconflict: str
    data: dict[str, Any]
    missing: tuple[tuple[str, str], ...]
    arrived_at: float
    created_at: float
    expires_at: float
    request_id: str | None

    @staticmethod
    def new(
        *,
        tenant_id: str,
        schema_id: str,
        external_id: str,
        batch_id: str,
        index: int,
        kind: str,
        onconflict: str,
        data: dict[str, Any],
        missing: tuple[tuple[str, str], ...],
        arrived_at: float,
        now: float,
        wait_s: float,
        request_id: str | None,
    ) -> PendingRecord:
        return PendingRecord(
            str(uuid.uuid4()),
            tenant_id,
            schema_id,
            external_id,
            batch_id,
            index,
            kind,
            onconflict,
            data,
            missing,
            arrived_at,
            now,
            now + wait_s,
            request_id,
        )


def _from_row(row: tuple[Any, ...]) -> PendingRecord:
    missing = tuple((s, e) for s, e in orjson.loads(row[9]))
    return PendingRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        orjson.loads(row[8]),
        missing,
        row[10],
        row[11],
        row[12],
        row[13],
    )


class PendingStore:
    """Pending rows plus an exact count, so writes skip every pending query when there are none."""

    def __init__(self) -> None:
        self.count = 0

    def load_count(self, conn: sqlite3.Connection) -> None:
        self.count = conn.execute("SELECT count(*) FROM pending").fetchone()[0]

    def for_entities(
        self, conn: sqlite3.Connection, tenant_id: str, schema_id: str, external_ids: list[str]
    ) -> dict[str, PendingRecord]:
        """Parked records for these resources (at most one each: a later write supersedes)."""
        if self.count == 0 or not external_ids:
            return {}
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM pending WHERE tenant_id = ? AND schema_id = ? "
            f"AND external_id IN ({placeholders(len(external_ids))})",
            (tenant_id, schema_id, *external_ids),
        )
        return {r.external_id: r for r in map(_from_row, rows)}

    def waiting_on(
        self, conn: sqlite3.Connection, tenant_id: str, targets: Iterable[tuple[str, str]]
    ) -> list[PendingRecord]:
        """Parked records that name any of these (schema id, external id) targets, oldest first."""
        if self.count == 0:
            return []
        by_schema: dict[str, list[str]] = {}
        for schema_id, ext in targets:
            by_schema.setdefault(schema_id, []).append(ext)
        ids: set[str] = set()
        for schema_id, exts in by_schema.items():
            rows = conn.execute(
                "SELECT pending_id FROM pending_deps WHERE tenant_id = ? AND dst_schema = ? "
                f"AND dst_ext IN ({placeholders(len(exts))})",
                (tenant_id, schema_id, *exts),
            )
            ids.update(r[0] for r in rows)
        return self.by_ids(conn, ids)

    def by_ids(self, conn: sqlite3.Connection, ids: Iterable[str]) -> list[PendingRecord]:
        wanted = list(ids)
        if not wanted:
            return []
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM pending WHERE id IN ({placeholders(len(wanted))}) "
            "ORDER BY arrived_at, record_index",
            wanted,
        )
        return [_from_row(r) for r in rows]

    def expired(self, conn: sqlite3.Connection, now: float) -> list[PendingRecord]:
        if self.count == 0:
            return []
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM pending WHERE expires_at <= ? ORDER BY expires_at", (now,)
        )
        return [_from_row(r) for r in rows]

    def of_batch(self, conn: sqlite3.Connection, batch_id: str) -> list[PendingRecord]:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM pending WHERE batch_id = ? ORDER BY record_index", (batch_id,)
        )
        return [_from_row(r) for r in rows]

    def add(self, conn: sqlite3.Connection, records: list[PendingRecord]) -> None:
        if not records:
            return
        conn.executemany(
            f"INSERT INTO pending ({_COLUMNS}) VALUES ({placeholders(14)})",
            [
                (
                    r.id,
                    r.tenant_id,
                    r.schema_id,
                    r.external_id,
                    r.batch_id,
                    r.index,
                    r.kind,
                    r.onconflict,
                    orjson.dumps(r.data),
                    orjson.dumps(r.missing),
                    r.arrived_at,
                    r.created_at,
                    r.expires_at,
                    r.request_id,
                )
                for r in records
            ],
        )
        conn.executemany(
            "INSERT INTO pending_deps (pending_id, tenant_id, dst_schema, dst_ext) "
            "VALUES (?, ?, ?, ?)",
            [(r.id, r.tenant_id, s, e) for r in records for s, e in r.missing],
        )
        self.count += len(records)

    def set_missing(
        self, conn: sqlite3.Connection, record: PendingRecord, missing: tuple[tuple[str, str], ...]
    ) -> None:
        """Narrow what a record still waits for, so ``missingDependencies`` stays truthful."""
        conn.execute(
            "UPDATE pending SET missing = ? WHERE id = ?", (orjson.dumps(missing), record.id)
        )

    def remove(self, conn: sqlite3.Connection, ids: list[str]) -> None:
        if not ids:
            return
        marks = placeholders(len(ids))
        removed = conn.execute(f"DELETE FROM pending WHERE id IN ({marks})", ids).rowcount
        conn.execute(f"DELETE FROM pending_deps WHERE pending_id IN ({marks})", ids)
        self.count -= removed
