"""The admin API under ``/_admin``: what tests read and switch, behind its own bearer token.

``/_admin/health`` and ``/_admin/ready`` need no token (process supervisors probe them); every
other route needs ``Authorization: Bearer <admin_token>``. Answers are plain JSON objects, not
Reach's envelope, because this API is the sandbox's own. Admin requests are not rate limited,
not subject to faults and not in the request log, so reading state never changes it.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reach_sandbox.batch_rows import batch_doc, find_batch, list_batches
from reach_sandbox.config import BatchOrderConfig, RateLimitsConfig
from reach_sandbox.context import render_stored
from reach_sandbox.fault_specs import fault_adapter
from reach_sandbox.http import ApiError, JsonResponse, invalid, parse_json, query_int, read_body
from reach_sandbox.pending import PendingStore
from reach_sandbox.reads import (
    counts,
    decode_cursor,
    encode_cursor,
    history,
    one_resource,
    resource_page,
)
from reach_sandbox.registry import Registry, SchemaDef, Tenant
from reach_sandbox.requestlog import read_log
from reach_sandbox.state import Sandbox, sandbox_of

__all__ = ["admin_routes"]

Handler = Callable[[Request], Awaitable[Response]]
# Admin pages are for tests and people; large enough for a whole small scenario in one read.
_MAX_PAGE = 10000


def _json(data: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status_code=status)


def _authorized(handler: Callable[[Request, Sandbox], Awaitable[Response]]) -> Handler:
    async def guarded(request: Request) -> Response:
        sb = sandbox_of(request)
        expected = f"Bearer {sb.config.admin_token.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(expected, given):
            raise ApiError(401, "admin routes need Authorization: Bearer <admin_token>")
        return await handler(request, sb)

    return guarded


async def health(request: Request) -> Response:
    ready = sandbox_of(request).ready
    return _json({"status": "ok" if ready else "starting"}, 200 if ready else 503)


async def ready(request: Request) -> Response:
    sb = sandbox_of(request)
    body = {
        "ready": sb.ready,
        "queuedBatches": sb.batches.queued,
        "pendingRecords": sb.store.pending.count,
    }
    return _json(body, 200 if sb.ready else 503)


def _optional_tenant(sb: Sandbox, request: Request) -> Tenant | None:
    value = request.query_params.get("tenant") or request.path_params.get("tenant")
    if value is None:
        return None
    found = sb.registry.find_tenant(value)
    if found is None:
        raise ApiError(404, f"tenant {value!r} not found")
    return found


def _tenant(sb: Sandbox, request: Request) -> Tenant:
    found = _optional_tenant(sb, request)
    if found is None:
        raise ApiError(400, "tenant is required (Reach id or external id)")
    return found


def _schema(sb: Sandbox, request: Request, tenant: Tenant | None) -> SchemaDef | None:
    value = request.query_params.get("schema") or request.path_params.get("schema")
    if value is None:
        return None
    if tenant is None:
        raise ApiError(400, "schema needs a tenant (schemas belong to the tenant's partner)")
    found = sb.registry.schema(tenant.partner_id, value)
    if found is None:
        raise ApiError(404, f"schema {value!r} not found")
    return found


async def tenants(request: Request, sb: Sandbox) -> Response:
    return _json(
        {
            "tenants": [
                {"id": t.id, "externalId": t.external_id, "partnerId": t.partner_id, **t.doc}
                for t in sb.registry.tenants.values()
            ]
        }
    )


async def schemas(request: Request, sb: Sandbox) -> Response:
    return _json(
        {
            "schemas": [
                {
                    "id": s.id,
                    "name": s.name,
                    "partnerId": s.partner_id,
                    "version": s.version,
                    "definition": s.doc,
                }
                for s in sb.registry.schemas.values()
            ]
        }
    )


async def resources(request: Request, sb: Sandbox) -> Response:
    tenant = _tenant(sb, request)
    schema = _schema(sb, request, tenant)
    limit = query_int(request, "limit", 1000, 1, _MAX_PAGE)
    cursor = request.query_params.get("cursor")
    after = decode_cursor(cursor) if cursor else None
    page, total, last = await sb.db.run(
        resource_page, tenant.id, schema.id if schema else None, after, limit
    )
    names = {sid: s.name for sid, s in sb.registry.schemas.items()}
    return _json(
        {
            "resources": [
                {**render_stored(tenant, sid, ext, st), "schemaName": names.get(sid)}
                for sid, ext, st in page
            ],
            "total": total,
            "cursor": encode_cursor(last) if last else None,
        }
    )


async def resource(request: Request, sb: Sandbox) -> Response:
    tenant = _tenant(sb, request)
    schema = _schema(sb, request, tenant)
    if schema is None:
        raise ApiError(400, "schema is required")
    ext = request.path_params["externalId"]
    stored = await sb.db.run(one_resource, tenant.id, schema.id, ext)
    if stored is None:
        raise ApiError(404, f"resource {ext!r} not found")
    return _json({"resource": render_stored(tenant, schema.id, ext, stored)})


async def versions(request: Request, sb: Sandbox) -> Response:
    tenant = _optional_tenant(sb, request)
    schema = _schema(sb, request, tenant)
    rows = await sb.db.run(
        history,
        tenant.id if tenant else None,
        schema.id if schema else None,
        request.query_params.get("externalId"),
        query_int(request, "afterSeq", 0, 0, 1 << 62),
        query_int(request, "limit", 1000, 1, _MAX_PAGE),
    )
    return _json({"versions": rows})


async def requests(request: Request, sb: Sandbox) -> Response:
    await sb.flush_log()
    tenant = _optional_tenant(sb, request)
    rows = await sb.db.run(
        read_log,
        query_int(request, "afterSeq", 0, 0, 1 << 62),
        query_int(request, "limit", 1000, 1, _MAX_PAGE),
        tenant.id if tenant else None,
        request.query_params.get("pathPrefix"),
    )
    return _json({"requests": rows})


def _batch_docs(
    conn: sqlite3.Connection, tenant_id: str | None, limit: int, registry: Registry
) -> list[dict[str, Any]]:
    rows, _total, _cursor = list_batches(conn, tenant_id, None, limit, None, newest_first=False)
    return [batch_doc(r, registry, None) for r in rows]


async def batches(request: Request, sb: Sandbox) -> Response:
    tenant = _optional_tenant(sb, request)
    limit = query_int(request, "limit", 1000, 1, _MAX_PAGE)
    docs = await sb.db.run(_batch_docs, tenant.id if tenant else None, limit, sb.registry)
    return _json({"batches": docs})


def _one_batch(
    conn: sqlite3.Connection, batch_id: str, pending: PendingStore, registry: Registry
) -> dict[str, Any] | None:
    row = find_batch(conn, batch_id, None)
    if row is None:
        return None
    doc = batch_doc(row, registry, pending.of_batch(conn, batch_id))
    doc["tenantId"] = row["tenant_id"]
    return doc


async def batch(request: Request, sb: Sandbox) -> Response:
    batch_id = request.path_params["batchId"]
    doc = await sb.db.run(_one_batch, batch_id, sb.store.pending, sb.registry)
    if doc is None:
        raise ApiError(404, f"batch {batch_id!r} not found")
    return _json({"batch": doc})


async def state_counts(request: Request, sb: Sandbox) -> Response:
    found = await sb.db.run(counts)
    names = {sid: s.name for sid, s in sb.registry.schemas.items()}
    found["resources"] = {
        tenant_id: {names.get(sid, sid): n for sid, n in per.items()}
        for tenant_id, per in found["resources"].items()
    }
    found["queuedBatches"] = sb.batches.queued
    return _json(found)


async def list_faults(request: Request, sb: Sandbox) -> Response:
    return _json({"faults": [f.to_json() for f in sb.faults.snapshot()]})


async def add_fault(request: Request, sb: Sandbox) -> Response:
    raw = await read_body(request, sb.config.limits.max_body_bytes)
    try:
        spec = fault_adapter.validate_json(raw, strict=True)
    except ValidationError as exc:
        raise invalid("invalid fault", exc) from None
    return _json(sb.faults.add(spec).to_json(), 201)


async def remove_fault(request: Request, sb: Sandbox) -> Response:
    if not sb.faults.remove(request.path_params["faultId"]):
        raise ApiError(404, "no such fault")
    return _json({"removed": True})


async def clear_faults(request: Request, sb: Sandbox) -> Response:
    sb.faults.clear()
    return _json({"removed": True})


async def rate_limits(request: Request, sb: Sandbox) -> Response:
    if request.method == "PUT":
        raw = await read_body(request, sb.config.limits.max_body_bytes)
        try:
            settings = RateLimitsConfig.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid("invalid rate limits", exc) from None
        sb.limiter.configure(settings)
    return _json(sb.limiter.settings.model_dump(mode="json"))


async def batch_order(request: Request, sb: Sandbox) -> Response:
    """Arrival order or shuffled (see ``batches.py``); a PUT takes effect at the next pick."""
    if request.method == "PUT":
        raw = await read_body(request, sb.config.limits.max_body_bytes)
        try:
            settings = BatchOrderConfig.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid("invalid batch order", exc) from None
        sb.batches.set_order(settings)
    return _json(sb.batches.order.model_dump(mode="json"))


async def sink(request: Request, sb: Sandbox) -> Response:
    """Sink mode, for throughput benchmarks only (README "Sink mode"): ``{"enabled": bool}``."""
    if request.method == "PUT":
        body = parse_json(await read_body(request, sb.config.limits.max_body_bytes))
        if (
            not isinstance(body, dict)
            or set(body) != {"enabled"}
            or type(body["enabled"]) is not bool
        ):
            raise ApiError(400, 'body must be {"enabled": true} or {"enabled": false}')
        sb.batches.sink = body["enabled"]
    return _json({"enabled": sb.batches.sink})


async def wait_idle(request: Request, sb: Sandbox) -> Response:
    """Block until every accepted batch is processed (parked records aside), or the timeout."""
    timeout = query_int(request, "timeoutSeconds", 30, 0, 600)
    idle = await sb.batches.wait_idle(timeout)
    return _json({"idle": idle, "queuedBatches": sb.batches.queued}, 200 if idle else 504)


async def reset(request: Request, sb: Sandbox) -> Response:
    await sb.reset()
    return _json({"reset": True})


async def mappings(request: Request, sb: Sandbox) -> Response:
    rows = await sb.db.run(
        lambda conn: conn.execute("SELECT partner_id, doc FROM mappings").fetchall()
    )
    return _json({"mappings": {partner: orjson.loads(doc) for partner, doc in rows}})


def admin_routes() -> list[Route]:
    a = _authorized
    return [
        Route("/_admin/health", health, methods=["GET"]),
        Route("/_admin/ready", ready, methods=["GET"]),
        Route("/_admin/tenants", a(tenants), methods=["GET"]),
        Route("/_admin/schemas", a(schemas), methods=["GET"]),
        Route("/_admin/mappings", a(mappings), methods=["GET"]),
        Route("/_admin/resources", a(resources), methods=["GET"]),
        Route("/_admin/resources/{tenant}/{schema}/{externalId}", a(resource), methods=["GET"]),
        Route("/_admin/history", a(versions), methods=["GET"]),
        Route("/_admin/requests", a(requests), methods=["GET"]),
        Route("/_admin/batches", a(batches), methods=["GET"]),
        Route("/_admin/batches/{batchId}", a(batch), methods=["GET"]),
        Route("/_admin/counts", a(state_counts), methods=["GET"]),
        Route("/_admin/faults", a(list_faults), methods=["GET"]),
        Route("/_admin/faults", a(add_fault), methods=["POST"]),
        Route("/_admin/faults", a(clear_faults), methods=["DELETE"]),
        Route("/_admin/faults/{faultId}", a(remove_fault), methods=["DELETE"]),
        Route("/_admin/rate-limits", a(rate_limits), methods=["GET", "PUT"]),
        Route("/_admin/batch-order", a(batch_order), methods=["GET", "PUT"]),
        Route("/_admin/sink", a(sink), methods=["GET", "PUT"]),
        Route("/_admin/wait-idle", a(wait_idle), methods=["POST"]),
        Route("/_admin/reset", a(reset), methods=["POST"]),
    ]
