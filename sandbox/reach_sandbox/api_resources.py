"""Synchronous single-resource routes and the resource list (docs/reach-api.md §3.5, §3.6).

Single writes validate synchronously whatever the batch validation mode, because their answer
is the write's result. They take no ``dependencyWaitTimeout`` (§3.5 leaves it open): a ``$ref`` to
a missing resource is a 400.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reach_sandbox.context import ApiContext, api_context
from reach_sandbox.deletes import DeleteRequest
from reach_sandbox.engine import Code, Op, OpKind, Outcome, WriteContext
from reach_sandbox.http import (
    ApiError,
    query_bool,
    query_choice,
    query_int,
    read_json,
    respond,
)
from reach_sandbox.reads import (
    decode_cursor,
    encode_cursor,
    included,
    one_resource,
    resource_page,
)
from reach_sandbox.writes import Stored

__all__ = ["outcome_error", "resource_routes"]

_STATUS_OF_CODE = {Code.CONFLICT: 409, Code.NOT_FOUND: 404, Code.REFERENCED: 409}


def outcome_error(outcome: Outcome) -> ApiError:
    """A failed single write as an HTTP error: 404 absent, 409 conflict, else 400 bad data."""
    status = _STATUS_OF_CODE.get(outcome.code, 400) if outcome.code else 400
    return ApiError(status, outcome.message or "write failed", [outcome.to_json()])


async def _record(request: Request, ctx: ApiContext) -> tuple[str, dict[str, Any]]:
    """The ``data`` object of a single write, with the external id from the path if given."""
    body = await read_json(request, ctx.sandbox.config.limits.max_body_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise ApiError(400, 'body must be {"data": {...}}')
    data: dict[str, Any] = body["data"]
    id_field = ctx.schema.external_id_field
    path_ext = request.path_params.get("externalId")
    if path_ext is not None:
        if data.get(id_field, path_ext) != path_ext:
            raise ApiError(
                400,
                f"{id_field} in the body differs from the external id in the path",
                [{"index": 0, "field": id_field, "message": "differs from the path"}],
            )
        data = {**data, id_field: path_ext}
    request.state.record_count = 1
    ignore_unknown = query_bool(request, "ignoreUnknownFields", False)
    cleaned, errors = ctx.schema.validator.validate(data, 0, ignore_unknown)
    if cleaned is None:
        raise ApiError(400, "the record is invalid", [e.to_json() for e in errors])
    return cleaned[id_field], cleaned


async def _write(request: Request, kind: OpKind) -> tuple[ApiContext, str, Stored]:
    ctx = api_context(request)
    ext, data = await _record(request, ctx)
    onconflict = "upsert"
    if kind == "upsert":
        onconflict = query_choice(request, "onconflict", "upsert", ("upsert", "reject"))
    write = WriteContext(
        ctx.tenant.id, ctx.schema, ctx.arrived_at, onconflict, request_id=ctx.request_id
    )
    sb = ctx.sandbox
    result = await sb.db.run(sb.store.write_one, write, Op(0, ext, kind, data), time.time())
    outcome = result.outcomes[0]
    stored = result.final.get(ext)
    if outcome.status != "ok" or stored is None:
        raise outcome_error(outcome)
    return ctx, ext, stored


async def upload_resource(request: Request) -> Response:
    ctx, ext, stored = await _write(request, "upsert")
    return respond(ctx.render(ctx.schema.id, ext, stored), 200, "Resource uploaded")


async def patch_resource(request: Request) -> Response:
    ctx, ext, stored = await _write(request, "patch")
    return respond(await _with_included(ctx, ext, stored), 200, "Resource updated")


async def get_resource(request: Request) -> Response:
    ctx = api_context(request)
    ext = request.path_params["externalId"]
    sb = ctx.sandbox
    stored = await sb.db.run(one_resource, ctx.tenant.id, ctx.schema.id, ext)
    if stored is None:
        raise ApiError(404, f"resource {ext!r} not found")
    return respond(await _with_included(ctx, ext, stored))


async def delete_resource(request: Request) -> Response:
    ctx = api_context(request)
    ext = request.path_params["externalId"]
    request.state.record_count = 1
    req = DeleteRequest(
        ctx.tenant.id,
        ctx.schema.id,
        [ext],
        cascade=False,
        dry_run=False,
        arrived_at=ctx.arrived_at,
        request_id=ctx.request_id,
    )
    sb = ctx.sandbox
    done = await sb.db.run(sb.store.delete_one, req, time.time())
    if done.outcome.status != "ok":
        raise outcome_error(done.outcome)
    if done.existed is None:
        raise ApiError(404, f"resource {ext!r} not found")
    return respond(
        {"result": ctx.render(ctx.schema.id, ext, done.existed)}, 200, "Resource deleted"
    )


async def list_resources(request: Request) -> Response:
    ctx = api_context(request)
    limits = ctx.sandbox.config.limits
    limit = query_int(request, "limit", limits.default_page_size, 1, limits.max_page_size)
    cursor = request.query_params.get("cursor")
    after = decode_cursor(cursor) if cursor else None
    if cursor and after is None:
        raise ApiError(400, "cursor is not one this server issued")
    sb = ctx.sandbox
    page, total, last = await sb.db.run(resource_page, ctx.tenant.id, ctx.schema.id, after, limit)
    return respond(
        {
            "results": [ctx.render(sid, ext, stored) for sid, ext, stored in page],
            "pagination": {
                "hasNextPage": last is not None,
                "total": total,
                "cursor": encode_cursor(last) if last is not None else None,
            },
        }
    )


async def _with_included(ctx: ApiContext, ext: str, stored: Stored) -> dict[str, Any]:
    sb = ctx.sandbox
    refs = await sb.db.run(included, ctx.tenant.id, ctx.schema, stored.data)
    return {
        "result": ctx.render(ctx.schema.id, ext, stored),
        "included": [ctx.render(sid, e, s) for sid, e, s in refs],
    }


def resource_routes() -> list[Route]:
    """Single-resource routes; mounted after the batch routes, so ``/batch`` is never an id."""
    return [
        Route("/api/resources/{schema}", upload_resource, methods=["POST"]),
        Route("/api/resources/{schema}", list_resources, methods=["GET"]),
        Route("/api/resources/{schema}/{externalId}", upload_resource, methods=["POST"]),
        Route("/api/resources/{schema}/{externalId}", get_resource, methods=["GET"]),
        Route("/api/resources/{schema}/{externalId}", patch_resource, methods=["PATCH"]),
        Route("/api/resources/{schema}/{externalId}", delete_resource, methods=["DELETE"]),
    ]
