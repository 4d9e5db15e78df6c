"""Batch routes: upload, patch and delete (202 + batchId), and batch status (§3.1-§3.4).

A request is checked as a whole before its 202: body shape, the per-request limit and, in
``sync`` validation mode, every record; any failure refuses it with nothing queued. Everything
that depends on existing state is decided later by the worker and reported in the batch status.

In sink mode (``PUT /_admin/sink``, README "Sink mode") an upload or patch keeps the same
request checks except the records' schema validation (each record must still be an object with
its external id), and its batch is a success of every record at once, nothing applied.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reach_sandbox.batch_rows import (
    BatchJob,
    BatchOptions,
    batch_doc,
    find_batch,
    list_batches,
)
from reach_sandbox.context import ApiContext, api_context
from reach_sandbox.deletes import DeleteRequest, DeleteResult
from reach_sandbox.engine import OpKind
from reach_sandbox.http import (
    ApiError,
    parse_json,
    query_bool,
    query_choice,
    query_int,
    read_body,
    respond,
)
from reach_sandbox.intake import batch_records, delete_body, records_to_ops
from reach_sandbox.ledger import BatchType
from reach_sandbox.pending import PendingStore
from reach_sandbox.reads import decode_cursor, encode_cursor
from reach_sandbox.registry import Registry

__all__ = ["batch_routes"]

_SORTS = ("-createdAt", "createdAt")


async def upload_batch(request: Request) -> Response:
    return await _accept_records(request, BatchType.INGEST)


async def patch_batch(request: Request) -> Response:
    return await _accept_records(request, BatchType.PATCH)


async def _accept_records(request: Request, batch_type: BatchType) -> Response:
    ctx = api_context(request)
    config = ctx.sandbox.config
    raw = await read_body(request, config.limits.max_body_bytes)
    records = batch_records(parse_json(raw), config.limits.max_batch_records)
    request.state.record_count = len(records)
    ignore_unknown = query_bool(request, "ignoreUnknownFields", False)
    onconflict, wait = "upsert", 0
    if batch_type == BatchType.INGEST:
        onconflict = query_choice(request, "onconflict", "upsert", ("upsert", "reject"))
        top = config.limits.max_dependency_wait_seconds
        wait = query_int(request, "dependencyWaitTimeout", 0, 0, top)
    kind: OpKind = "upsert" if batch_type == BatchType.INGEST else "patch"
    sink = ctx.sandbox.batches.sink
    validate = config.validation.mode == "sync" and not sink
    ops, errors = records_to_ops(records, ctx.schema, kind, ignore_unknown, validate)
    if errors:
        bad = len({e.index for e in errors})
        raise ApiError(
            400,
            f"{bad} of {len(records)} records are invalid; nothing was accepted",
            [e.to_json() for e in errors],
        )
    options = BatchOptions(request.url.path, onconflict, ignore_unknown, wait)
    job = BatchJob(
        str(uuid.uuid4()),
        ctx.tenant.id,
        ctx.schema.id,
        batch_type,
        options,
        ctx.arrived_at,
        ctx.request_id,
        ops,
    )
    return await _submit(request, ctx, job, raw, len(ops), sink)


async def delete_batch(request: Request) -> Response:
    ctx = api_context(request)
    config = ctx.sandbox.config
    raw = await read_body(request, config.limits.max_body_bytes)
    ids, cascade, dry_run = delete_body(parse_json(raw), config.limits.max_delete_ids)
    request.state.record_count = len(ids) if ids is not None else None
    sb = ctx.sandbox
    if dry_run:
        req = DeleteRequest(ctx.tenant.id, ctx.schema.id, ids, cascade, True, ctx.arrived_at)
        plan = await sb.db.run(sb.store.plan_delete, req, time.time())
        return respond(_dry_run_doc(plan, sb.registry), 200, "Dry run: nothing was deleted")
    options = BatchOptions(request.url.path, cascade=cascade)
    job = BatchJob(
        str(uuid.uuid4()),
        ctx.tenant.id,
        ctx.schema.id,
        BatchType.DELETE,
        options,
        ctx.arrived_at,
        ctx.request_id,
        [],
        ids,
    )
    total = len(ids) if ids is not None else await sb.db.run(_count, ctx.tenant.id, ctx.schema.id)
    return await _submit(request, ctx, job, raw, total)


async def _submit(
    request: Request,
    ctx: ApiContext,
    job: BatchJob,
    payload: bytes,
    total: int,
    sink: bool = False,
) -> Response:
    sb = ctx.sandbox
    key = request.headers.get("idempotency-key") if sb.config.batches.idempotency_keys else None
    if sink:
        batch_id = await sb.batches.submit_unapplied(job, total, key)
    else:
        batch_id = await sb.batches.submit(job, payload, total, key)
    data = {
        "batchId": batch_id,
        "message": "Batch queued for processing",
        "recordCount": total,
        "schemaDefinitionId": ctx.schema.id,
    }
    return respond(data, 202, "Batch accepted")


def _count(conn: Any, tenant_id: str, schema_id: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM resources WHERE tenant_id = ? AND schema_id = ?",
        (tenant_id, schema_id),
    ).fetchone()
    return int(row[0])


def _dry_run_doc(plan: DeleteResult, registry: Registry) -> dict[str, Any]:
    """§7 Q8: a synchronous preview with per-schema counts (the shape is the sandbox's own)."""
    schema_ids = sorted(set(plan.deleted) | set(plan.skipped))
    return {
        "dryRun": True,
        "schemas": [
            {
                "schemaDefinitionId": sid,
                "schemaName": registry.schemas[sid].name if sid in registry.schemas else None,
                "deleteCount": plan.deleted.get(sid, 0),
                "skippedCount": plan.skipped.get(sid, 0),
            }
            for sid in schema_ids
        ],
        "totalDeleteCount": sum(plan.deleted.values()),
        "skippedCount": sum(plan.skipped.values()),
        "cascadeDeleteCount": plan.cascaded,
    }


def _batch_with_pending(
    conn: Any, batch_id: str, tenant_id: str, pending: PendingStore | None, registry: Registry
) -> dict[str, Any] | None:
    row = find_batch(conn, batch_id, tenant_id)
    if row is None:
        return None
    parked = pending.of_batch(conn, batch_id) if pending is not None else None
    return batch_doc(row, registry, parked)


async def get_batch(request: Request) -> Response:
    ctx = api_context(request, needs_schema=False)
    sb = ctx.sandbox
    batch_id = request.path_params["batchId"]
    with_pending = query_bool(request, "includePendingDetails", False)
    doc = await sb.db.run(
        _batch_with_pending,
        batch_id,
        ctx.tenant.id,
        sb.store.pending if with_pending else None,
        sb.registry,
    )
    if doc is None:
        raise ApiError(404, f"batch {batch_id!r} not found")
    return respond(doc)


async def get_batches(request: Request) -> Response:
    ctx = api_context(request, needs_schema=False)
    sb = ctx.sandbox
    limits = sb.config.limits
    limit = query_int(request, "limit", limits.default_page_size, 1, limits.max_page_size)
    batch_type = request.query_params.get("batchType") or None
    if batch_type is not None and batch_type not in set(BatchType):
        raise ApiError(400, f"batchType must be one of {', '.join(BatchType)}")
    newest_first = query_choice(request, "sortBy", "-createdAt", _SORTS) == "-createdAt"
    cursor = request.query_params.get("cursor")
    decoded = decode_cursor(cursor) if cursor else None
    if cursor and (decoded is None or not decoded.isdigit()):
        raise ApiError(400, "cursor is not one this server issued")
    after = int(decoded) if decoded else None
    rows, total, last = await sb.db.run(
        list_batches, ctx.tenant.id, after, limit, batch_type, newest_first
    )
    return respond(
        {
            "results": [batch_doc(r, sb.registry, None) for r in rows],
            "pagination": {
                "hasNextPage": last is not None,
                "total": total,
                "cursor": encode_cursor(str(last)) if last is not None else None,
            },
        }
    )


def batch_routes() -> list[Route]:
    path = "/api/resources/{schema}/batch"
    return [
        Route(path, upload_batch, methods=["POST"]),
        Route(path, patch_batch, methods=["PATCH"]),
        Route(path, delete_batch, methods=["DELETE"]),
        Route("/api/batches", get_batches, methods=["GET"]),
        Route("/api/batches/{batchId}", get_batch, methods=["GET"]),
    ]
