"""Batch jobs: what the worker applies, how a batch row is stored, and how its status reads.

A batch row keeps the request body until the batch is processed, so batches accepted before a
crash or a SIGTERM are processed after the restart instead of being lost with their 202.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from reach_sandbox.deletes import DeleteRequest
from reach_sandbox.engine import Op, OpKind, WriteContext
from reach_sandbox.intake import batch_records, delete_body, records_to_ops
from reach_sandbox.ledger import TERMINAL, BatchStatus, BatchType
from reach_sandbox.payloads import PayloadStore
from reach_sandbox.pending import PendingRecord
from reach_sandbox.registry import Registry
from reach_sandbox.render import iso

__all__ = [
    "BatchJob",
    "BatchOptions",
    "batch_doc",
    "complete_unapplied",
    "fail_batch",
    "find_batch",
    "insert_batch",
    "list_batches",
    "start_batch",
    "unfinished_jobs",
]

_ROW = (
    "seq, id, tenant_id, schema_id, batch_type, status, options, total, processed, successful, "
    "failed, pending, errors, created_at, started_at, completed_at"
)
_KIND_OF_TYPE: dict[str, OpKind] = {
    BatchType.INGEST: "upsert",
    BatchType.PATCH: "patch",
    BatchType.DELETE: "delete",
}
# The failure code of a batch that cannot be recovered after a restart.
_LOST = "BATCH_LOST_ON_RESTART"
# Recovery re-reads stored bodies without limits: they were checked when accepted.
_NO_LIMIT = 1 << 30
# What the Ledger stores for a batch without failures.
_NO_ERRORS = orjson.dumps({"summary": {}, "details": {}})


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """The request's query and body switches, stored with the batch."""

    path: str
    onconflict: str = "upsert"
    ignore_unknown: bool = False
    dependency_wait_s: int = 0
    cascade: bool = False


@dataclass(frozen=True, slots=True)
class BatchJob:
    """One accepted batch, ready for the worker. ``external_ids`` None with a delete: deleteAll."""

    id: str
    tenant_id: str
    schema_id: str
    batch_type: BatchType
    options: BatchOptions
    arrived_at: float
    request_id: str | None
    ops: list[Op]
    external_ids: list[str] | None = None
    # True when records were not validated at acceptance (async mode, or recovered after restart)
    needs_validation: bool = False

    @property
    def kind(self) -> OpKind:
        return _KIND_OF_TYPE[self.batch_type]

    def write_context(
        self, registry: Registry, inject: Callable[[str], str | None] | None, async_mode: bool
    ) -> WriteContext:
        validate = self.options.ignore_unknown if (self.needs_validation or async_mode) else None
        return WriteContext(
            self.tenant_id,
            registry.schemas[self.schema_id],
            self.arrived_at,
            self.options.onconflict,
            self.options.dependency_wait_s,
            self.id,
            self.request_id,
            validate,
            inject,
        )

    def delete_request(self) -> DeleteRequest:
        return DeleteRequest(
            self.tenant_id,
            self.schema_id,
            self.external_ids,
            self.options.cascade,
            False,
            self.arrived_at,
            self.id,
            self.request_id,
        )


def insert_batch(
    conn: sqlite3.Connection, job: BatchJob, total: int, idempotency_key: str | None
) -> str | None:
    """Store an accepted batch; with a reused idempotency key, return the earlier batch's id."""
    if idempotency_key is not None:
        found = conn.execute(
            "SELECT id FROM batches WHERE tenant_id = ? AND idempotency_key = ?",
            (job.tenant_id, idempotency_key),
        ).fetchone()
        if found is not None:
            return str(found[0])
    conn.execute(
        "INSERT INTO batches (id, tenant_id, schema_id, batch_type, status, options, total, "
        "created_at, request_id, idempotency_key) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            job.id,
            job.tenant_id,
            job.schema_id,
            job.batch_type,
            BatchStatus.PENDING,
            orjson.dumps(asdict(job.options)),
            total,
            job.arrived_at,
            job.request_id,
            idempotency_key,
        ),
    )
    return None


def start_batch(conn: sqlite3.Connection, batch_id: str, now: float) -> None:
    conn.execute(
        "UPDATE batches SET status = ?, started_at = ? WHERE id = ? AND status = ?",
        (BatchStatus.PROCESSING, now, batch_id, BatchStatus.PENDING),
    )


def complete_unapplied(conn: sqlite3.Connection, batch_id: str, now: float) -> None:
    """Sink mode: a pending batch becomes a success of all its records, none of them applied."""
    conn.execute(
        "UPDATE batches SET status = ?, processed = total, successful = total, failed = 0, "
        "pending = 0, errors = ?, started_at = ?, completed_at = ? WHERE id = ? AND status = ?",
        (BatchStatus.SUCCESS, _NO_ERRORS, now, now, batch_id, BatchStatus.PENDING),
    )


def fail_batch(conn: sqlite3.Connection, batch_id: str, code: str, now: float) -> None:
    """Mark a batch failed as a whole, after an error that rolled its transaction back."""
    errors = {"summary": {code: 1}, "details": {}, "message": "the batch could not be processed"}
    conn.execute(
        "UPDATE batches SET status = ?, processed = total, successful = 0, failed = total, "
        "pending = 0, errors = ?, completed_at = ?, started_at = coalesce(started_at, ?) "
        "WHERE id = ?",
        (BatchStatus.FAILED, orjson.dumps(errors), now, now, batch_id),
    )


def unfinished_jobs(
    conn: sqlite3.Connection, registry: Registry, payloads: PayloadStore
) -> list[BatchJob]:
    """Batches accepted but never applied, rebuilt from their kept bodies, oldest first.

    A batch whose body is gone (or whose schema is) cannot be applied; it is failed as a whole
    rather than left ``pending`` for ever.
    """
    rows = conn.execute(
        "SELECT id, tenant_id, schema_id, batch_type, options, created_at, request_id "
        "FROM batches WHERE status IN (?, ?) ORDER BY seq",
        (BatchStatus.PENDING, BatchStatus.PROCESSING),
    ).fetchall()
    jobs: list[BatchJob] = []
    for bid, tenant_id, schema_id, btype, options_blob, created, request_id in rows:
        payload = payloads.load(bid)
        schema = registry.schemas.get(schema_id)
        if payload is None or schema is None:
            fail_batch(conn, bid, _LOST, time.time())
            continue
        body = orjson.loads(payload)
        batch_type = BatchType(btype)
        ids: list[str] | None = None
        ops: list[Op] = []
        if batch_type == BatchType.DELETE:
            ids, _cascade, _dry = delete_body(body, _NO_LIMIT)
        else:
            kind = _KIND_OF_TYPE[batch_type]
            ops, _ = records_to_ops(batch_records(body, _NO_LIMIT), schema, kind, False, False)
        options = BatchOptions(**orjson.loads(options_blob))
        jobs.append(
            BatchJob(
                bid,
                tenant_id,
                schema_id,
                batch_type,
                options,
                created,
                request_id,
                ops,
                ids,
                needs_validation=True,
            )
        )
    payloads.keep_only({job.id for job in jobs})
    return jobs


def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    names = [n.strip() for n in _ROW.split(",")]
    return dict(zip(names, row, strict=True))


def find_batch(
    conn: sqlite3.Connection, batch_id: str, tenant_id: str | None
) -> dict[str, Any] | None:
    """A batch row, only if it belongs to ``tenant_id`` (None: any tenant, for the admin API)."""
    row = conn.execute(f"SELECT {_ROW} FROM batches WHERE id = ?", (batch_id,)).fetchone()
    if row is None or (tenant_id is not None and row[2] != tenant_id):
        return None
    return _row_dict(row)


def list_batches(
    conn: sqlite3.Connection,
    tenant_id: str | None,
    after_seq: int | None,
    limit: int,
    batch_type: str | None,
    newest_first: bool,
) -> tuple[list[dict[str, Any]], int, int | None]:
    """A page of batch rows, the total matching, and the cursor of the next page (or None)."""
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if tenant_id is not None:
        where.append("tenant_id = ?")
        args.append(tenant_id)
    if batch_type is not None:
        where.append("batch_type = ?")
        args.append(batch_type)
    condition = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) FROM batches WHERE {condition}", args).fetchone()[0]
    if after_seq is not None:
        condition += " AND seq < ?" if newest_first else " AND seq > ?"
        args.append(after_seq)
    order = "DESC" if newest_first else "ASC"
    rows = conn.execute(
        f"SELECT {_ROW} FROM batches WHERE {condition} ORDER BY seq {order} LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
    page = [_row_dict(r) for r in rows[:limit]]
    cursor = page[-1]["seq"] if len(rows) > limit else None
    return page, total, cursor


def batch_doc(
    row: dict[str, Any], registry: Registry, pending: list[PendingRecord] | None
) -> dict[str, Any]:
    """The object of ``GET /api/batches/{id}`` (docs/reach-api.md §3.4)."""
    schema = registry.schemas.get(row["schema_id"])
    total, failed, successful = row["total"], row["failed"], row["successful"]
    errors = orjson.loads(row["errors"]) if row["errors"] else {"summary": {}, "details": {}}
    if "message" not in errors:
        errors["message"] = f"{failed} of {total} records failed" if failed else ""
    doc: dict[str, Any] = {
        "batchId": row["id"],
        "status": row["status"],
        "batchType": row["batch_type"],
        "progress": {
            "totalRecords": total,
            "processedRecords": row["processed"],
            "successfulRecords": successful,
            "pendingRecords": row["pending"],
            "failedRecords": failed,
            # A fraction of all records; 1.0 for an empty batch that finished.
            "successRate": round(successful / total, 4)
            if total
            else (1.0 if row["status"] in TERMINAL else 0.0),
        },
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(row["started_at"]),
        "completedAt": iso(row["completed_at"]),
        "schemaName": schema.name if schema else None,
        "schemaDefinitionId": row["schema_id"],
        "errors": errors,
    }
    if pending is not None:
        doc["pendingResources"] = [_pending_doc(p, registry) for p in pending]
    return doc


def _pending_doc(record: PendingRecord, registry: Registry) -> dict[str, Any]:
    def name(schema_id: str) -> str | None:
        found = registry.schemas.get(schema_id)
        return found.name if found else None

    return {
        "id": record.id,
        "resourceExternalId": record.external_id,
        "schemaDefinitionId": record.schema_id,
        "schemaName": name(record.schema_id),
        "missingDependencies": [
            {"schemaDefinitionId": s, "externalId": e, "schemaName": name(s)}
            for s, e in record.missing
        ],
        "expiresAt": iso(record.expires_at),
        "createdAt": iso(record.created_at),
    }
