"""Read-only queries: resources, pages of them, their history, counts. Database thread only."""

from __future__ import annotations

import base64
import binascii
import sqlite3
from typing import Any

import orjson

from reach_sandbox.registry import SchemaDef
from reach_sandbox.writes import CURRENT, Stored, load_resources

__all__ = [
    "Page",
    "counts",
    "decode_cursor",
    "encode_cursor",
    "history",
    "included",
    "one_resource",
    "resource_page",
]

Page = tuple[
    list[tuple[str, str, Stored]], int, str | None
]  # ((schema id, ext, row)...), total, next


def encode_cursor(value: str) -> str:
    """Cursors are opaque to clients, as Reach's are; they carry the last key of a page."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        return base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def one_resource(
    conn: sqlite3.Connection, tenant_id: str, schema_id: str, external_id: str
) -> Stored | None:
    return load_resources(conn, tenant_id, schema_id, [external_id]).get(external_id)


def included(
    conn: sqlite3.Connection, tenant_id: str, schema: SchemaDef, data: dict[str, Any]
) -> list[tuple[str, str, Stored]]:
    """The resources a record's ``$ref`` fields point at, for ``included``
    (docs/reach-api.md §3.6)."""
    found: list[tuple[str, str, Stored]] = []
    for prop, dst in schema.refs.items():
        value = data.get(prop)
        if type(value) is str:
            target = load_resources(conn, tenant_id, dst, [value]).get(value)
            if target is not None:
                found.append((dst, value, target))
    return found


def resource_page(
    conn: sqlite3.Connection,
    tenant_id: str | None,
    schema_id: str | None,
    after: str | None,
    limit: int,
) -> Page:
    """Resources ordered by (schema, external id); ``after`` is the key a previous page ended on."""
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if tenant_id is not None:
        where.append("r.tenant_id = ?")
        args.append(tenant_id)
    if schema_id is not None:
        where.append("r.schema_id = ?")
        args.append(schema_id)
    condition = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) FROM resources r WHERE {condition}", args).fetchone()[0]
    if after is not None:
        last_schema, _, last_ext = after.partition("\x00")
        condition += " AND (r.schema_id, r.external_id) > (?, ?)"
        args.extend((last_schema, last_ext))
    rows = conn.execute(
        f"{CURRENT} WHERE {condition} ORDER BY r.schema_id, r.external_id LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
    page = [
        (sid, ext, Stored(rid, orjson.loads(blob), created, updated))
        for ext, rid, blob, created, updated, sid in rows[:limit]
    ]
    cursor = f"{page[-1][0]}\x00{page[-1][1]}" if len(rows) > limit else None
    return page, total, cursor


def history(
    conn: sqlite3.Connection,
    tenant_id: str | None,
    schema_id: str | None,
    external_id: str | None,
    after_seq: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Version rows in sequence order: the full state after each write (None after a delete)."""
    where: list[str] = ["seq > ?"]
    args: list[Any] = [after_seq]
    for column, value in (
        ("tenant_id", tenant_id),
        ("schema_id", schema_id),
        ("external_id", external_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    rows = conn.execute(
        "SELECT seq, tenant_id, schema_id, external_id, op, data, arrived_at, applied_at, "
        f"batch_id, request_id FROM versions WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
        (*args, limit),
    )
    return [
        {
            "seq": seq,
            "tenantId": tenant,
            "schemaId": sid,
            "externalId": ext,
            "op": op,
            "data": orjson.loads(blob) if blob is not None else None,
            "arrivedAt": arrived,
            "appliedAt": applied,
            "batchId": batch,
            "requestId": request,
        }
        for seq, tenant, sid, ext, op, blob, arrived, applied, batch, request in rows
    ]


def counts(conn: sqlite3.Connection) -> dict[str, Any]:
    """How much of everything there is: a cheap check for tests and the demo."""
    resources: dict[str, dict[str, int]] = {}
    for tenant, sid, n in conn.execute(
        "SELECT tenant_id, schema_id, count(*) FROM resources GROUP BY tenant_id, schema_id"
    ):
        resources.setdefault(tenant, {})[sid] = n
    batches = dict(conn.execute("SELECT status, count(*) FROM batches GROUP BY status").fetchall())
    one = "SELECT count(*) FROM {}"
    return {
        "resources": resources,
        "batches": batches,
        "versions": conn.execute(one.format("versions")).fetchone()[0],
        "pending": conn.execute(one.format("pending")).fetchone()[0],
        "requests": conn.execute(one.format("request_log")).fetchone()[0],
    }
