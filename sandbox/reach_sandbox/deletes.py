"""Deleting resources with docs/reach-api.md §3.3 reference rules (and §7 Q8 for the open cases).

An absent id counts as deleted. Without ``cascade``, a resource that something outside the
deletion still references is skipped and reported; with ``cascade``, whatever references a
deleted resource goes too, transitively. A dry run computes the same plan and writes nothing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from reach_sandbox.db import placeholders
from reach_sandbox.engine import Code, Outcome
from reach_sandbox.pending import PendingRecord, PendingStore
from reach_sandbox.writes import VersionHead, write_versions

__all__ = ["DeleteRequest", "DeleteResult", "apply_deletes"]

Key = tuple[str, str]  # (schema id, external id)


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    tenant_id: str
    schema_id: str
    external_ids: list[str] | None  # None: every resource of the schema (deleteAll)
    cascade: bool
    dry_run: bool
    arrived_at: float
    batch_id: str | None = None
    request_id: str | None = None


@dataclass(slots=True)
class DeleteResult:
    outcomes: list[Outcome] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)  # schema id -> count, cascade included
    skipped: dict[str, int] = field(default_factory=dict)
    superseded: list[PendingRecord] = field(default_factory=list)

    # listed ids that existed and were deleted; the rest of ``deleted`` came by cascade
    direct: set[str] = field(default_factory=set)

    @property
    def cascaded(self) -> int:
        return sum(self.deleted.values()) - len(self.direct)


def apply_deletes(
    conn: sqlite3.Connection, req: DeleteRequest, pending: PendingStore, now: float
) -> DeleteResult:
    """Plan the deletion and, unless it is a dry run, apply it inside the caller's transaction."""
    listed = _listed(conn, req)
    existing = _existing(conn, req.tenant_id, req.schema_id, listed)
    doomed: set[Key] = {(req.schema_id, ext) for ext in existing}
    if req.cascade:
        doomed = _with_referrers(conn, req.tenant_id, doomed)
    else:
        doomed = _without_referenced(conn, req.tenant_id, doomed)
    result = DeleteResult()
    for index, ext in enumerate(listed):
        if ext not in existing:
            result.outcomes.append(Outcome(index, ext, "ok"))
        elif (req.schema_id, ext) in doomed:
            result.direct.add(ext)
            result.outcomes.append(Outcome(index, ext, "ok"))
        else:
            result.skipped[req.schema_id] = result.skipped.get(req.schema_id, 0) + 1
            result.outcomes.append(
                Outcome(
                    index,
                    ext,
                    "failed",
                    Code.REFERENCED,
                    "referenced by another resource;"
                    " not deleted (use cascade to delete the referencing resources too)",
                )
            )
    for schema_id, _ext in doomed:
        result.deleted[schema_id] = result.deleted.get(schema_id, 0) + 1
    if not req.dry_run:
        _delete(conn, req, sorted(doomed), pending, now, result)
    return result


def _listed(conn: sqlite3.Connection, req: DeleteRequest) -> list[str]:
    if req.external_ids is not None:
        return req.external_ids
    rows = conn.execute(
        "SELECT external_id FROM resources WHERE tenant_id = ? AND schema_id = ? "
        "ORDER BY external_id",
        (req.tenant_id, req.schema_id),
    )
    return [r[0] for r in rows]


def _existing(
    conn: sqlite3.Connection, tenant_id: str, schema_id: str, exts: list[str]
) -> set[str]:
    unique = list(dict.fromkeys(exts))
    if not unique:
        return set()
    rows = conn.execute(
        "SELECT external_id FROM resources WHERE tenant_id = ? AND schema_id = ? "
        f"AND external_id IN ({placeholders(len(unique))})",
        (tenant_id, schema_id, *unique),
    )
    return {r[0] for r in rows}


def _referrers(conn: sqlite3.Connection, tenant_id: str, keys: set[Key]) -> dict[Key, set[Key]]:
    """For each key, the resources whose ``$ref`` fields point at it."""
    by_schema: dict[str, list[str]] = {}
    for schema_id, ext in keys:
        by_schema.setdefault(schema_id, []).append(ext)
    found: dict[Key, set[Key]] = {}
    for schema_id, exts in by_schema.items():
        rows = conn.execute(
            "SELECT src_schema, src_ext, dst_ext FROM refs WHERE tenant_id = ? AND dst_schema = ? "
            f"AND dst_ext IN ({placeholders(len(exts))})",
            (tenant_id, schema_id, *exts),
        )
        for src_schema, src_ext, dst_ext in rows:
            found.setdefault((schema_id, dst_ext), set()).add((src_schema, src_ext))
    return found


def _with_referrers(conn: sqlite3.Connection, tenant_id: str, doomed: set[Key]) -> set[Key]:
    frontier = set(doomed)
    while frontier:
        referrers = _referrers(conn, tenant_id, frontier)
        frontier = {src for srcs in referrers.values() for src in srcs} - doomed
        doomed |= frontier
    return doomed


def _without_referenced(conn: sqlite3.Connection, tenant_id: str, doomed: set[Key]) -> set[Key]:
    """Drop every key still referenced from outside the set, until nothing changes."""
    referrers = _referrers(conn, tenant_id, doomed)
    while True:
        kept = {key for key in doomed if not (referrers.get(key, set()) - doomed)}
        if kept == doomed:
            return kept
        doomed = kept


def _delete(
    conn: sqlite3.Connection,
    req: DeleteRequest,
    doomed: list[Key],
    pending: PendingStore,
    now: float,
    result: DeleteResult,
) -> None:
    if not doomed:
        return
    tenant = req.tenant_id
    conn.executemany(
        "DELETE FROM resources WHERE tenant_id = ? AND schema_id = ? AND external_id = ?",
        [(tenant, sid, ext) for sid, ext in doomed],
    )
    conn.executemany(
        "DELETE FROM refs WHERE tenant_id = ? AND src_schema = ? AND src_ext = ?",
        [(tenant, sid, ext) for sid, ext in doomed],
    )
    by_schema: dict[str, list[str]] = {}
    for sid, ext in doomed:
        by_schema.setdefault(sid, []).append(ext)
    request_id = None if req.batch_id is not None else req.request_id
    for sid, exts in by_schema.items():
        head = VersionHead(tenant, sid, req.arrived_at, now, req.batch_id, request_id)
        write_versions(conn, head, [(ext, "delete", None) for ext in exts])
        parked = pending.for_entities(conn, tenant, sid, exts)
        result.superseded.extend(parked.values())
        pending.remove(conn, [p.id for p in parked.values()])
