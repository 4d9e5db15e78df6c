"""Partner routes: tenants, schema definitions, schema mappings (docs/reach-api.md §3.7-§3.9).

Bodies are checked for the fields and types the docs list; fields the docs do not list are
ignored rather than refused, because the two copies of the docs disagree on the optional ones.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reach_sandbox.context import principal_of
from reach_sandbox.db import transaction
from reach_sandbox.http import ApiError, invalid, query_int, read_json, respond
from reach_sandbox.reads import decode_cursor, encode_cursor
from reach_sandbox.registry import SchemaDef, Tenant, save_schema, save_tenant
from reach_sandbox.render import dual_case, iso, platform_id
from reach_sandbox.state import Sandbox, sandbox_of
from reach_sandbox.validation import SchemaError

__all__ = ["partner_routes"]

_NAME = r"^[a-zA-Z0-9_-]+$"
_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Location(_Body):
    addressLine1: str | None = None
    addressLine2: str | None = None
    addressLine3: str | None = None
    locality: str | None = None
    district: str | None = None
    postalCode: str | None = None
    countryCode: str | None = None


class _TenantFields(_Body):
    website: str | None = None
    branding: dict[str, Any] | None = None
    dataIntegrationCompletedAt: str | None = None
    websiteTrackingCompletedAt: str | None = None
    smsOptInImageUrls: list[str] | None = None


class _TenantCreate(_TenantFields):
    external_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    locations: list[_Location]
    measureDateAttributionStyle: str | None = None


class _TenantPatch(_TenantFields):
    externalId: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)
    locations: list[_Location] | None = None
    uiDefaults: dict[str, Any] | None = None


class _SchemaFields(_Body):
    description: str | None = Field(default=None, min_length=1)
    category: (
        Literal["contacts_schema", "transactions_schema", "locations_schema", "custom_schema"]
        | None
    ) = None
    externalIdField: str | None = Field(default=None, min_length=1)
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    fieldsToExpose: list[dict[str, Any]] | None = None
    exposeNameJsonPath: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for old, new in (
                ("external_id_field", "externalIdField"),
                ("plural_name", "pluralName"),
            ):
                if old in data and new not in data:
                    data[new] = data.pop(old)
        return data


class _SchemaCreate(_SchemaFields):
    name: str = Field(pattern=_NAME)
    pluralName: str | None = Field(default=None, pattern=_NAME)
    description: str = Field(min_length=1)
    category: Literal["contacts_schema", "transactions_schema", "locations_schema", "custom_schema"]
    externalIdField: str = Field(min_length=1)
    json_schema: dict[str, Any] = Field(alias="schema")


def _parse(model: type[_M], body: Any) -> _M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid("invalid request body", exc) from None


def _tenant_summary(t: Tenant) -> dict[str, Any]:
    doc = t.doc
    return {
        "id": t.id,
        "externalId": t.external_id,
        "name": doc.get("name"),
        "website": doc.get("website"),
        "locations": doc.get("locations", []),
        "dataIntegrationComplete": doc.get("dataIntegrationCompletedAt") is not None,
        "smsOptInImageUrls": doc.get("smsOptInImageUrls") or [],
        "uiDefaults": doc.get("uiDefaults")
        or {"emailHelpDialogShow": True, "engageOnboardingShow": True},
    }


def _tenant_patched(t: Tenant) -> dict[str, Any]:
    """What §3.7 lists for a PATCH answer: no externalId, no dataIntegrationCompletedAt, so a
    client that reads them from it fails here as it would on Reach."""
    summary = _tenant_summary(t)
    keys = (
        "id",
        "name",
        "website",
        "dataIntegrationComplete",
        "locations",
        "uiDefaults",
        "smsOptInImageUrls",
    )
    return {key: summary[key] for key in keys}


def _tenant_full(t: Tenant) -> dict[str, Any]:
    """A tenant as §3.7 lists it in ``GET /partner/tenants``: the timestamps, not the flag."""
    doc = t.doc
    summary = _tenant_summary(t)
    del summary["dataIntegrationComplete"]
    return {
        **summary,
        "createdAt": iso(t.created_at),
        "updatedAt": iso(t.updated_at),
        "userCount": 0,
        "branding": doc.get("branding"),
        "deletedAt": None,
        "dataIntegrationCompletedAt": doc.get("dataIntegrationCompletedAt"),
        "websiteTrackingCompletedAt": doc.get("websiteTrackingCompletedAt"),
    }


def schema_json(s: SchemaDef) -> dict[str, Any]:
    """A schema definition as §3.8 returns it, snake_case and camelCase keys both."""
    doc = s.doc
    body = dual_case(
        {
            "platform_id": platform_id(s.partner_id),
            "plural_name": doc["pluralName"],
            "version_number": s.version,
            "partner_db_id": None,
            "partner_db_query": None,
            "reference_schemas": sorted(set(s.refs.values())),
            "external_id_field": s.external_id_field,
            "deactivated_at": None,
            "created_at": iso(s.created_at),
            "updated_at": iso(s.updated_at),
        }
    )
    body.update(
        {
            "id": s.id,
            "name": s.name,
            "description": doc["description"],
            "category": doc["category"],
            "schema": doc["schema"],
            "fieldsToExpose": doc.get("fieldsToExpose") or [],
            "exposeNameJsonPath": doc.get("exposeNameJsonPath"),
        }
    )
    return body


async def _persist(sb: Sandbox, save: Callable[[sqlite3.Connection, _T], None], item: _T) -> None:
    def run(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            save(conn, item)

    try:
        await sb.db.run(run)
    except sqlite3.IntegrityError as exc:
        raise ApiError(409, f"conflicts with an existing record ({exc})") from None


async def create_tenant(request: Request) -> Response:
    sb, partner = sandbox_of(request), principal_of(request).partner_id
    body = _parse(_TenantCreate, await read_json(request, sb.config.limits.max_body_bytes))
    if sb.registry.tenant_for(partner, body.external_id, "external_id") is not None:
        raise ApiError(409, f"a tenant with external_id {body.external_id!r} already exists")
    now = time.time()
    doc = body.model_dump(mode="json", exclude={"external_id"})
    tenant = Tenant(str(uuid.uuid4()), partner, body.external_id, doc, now, now)
    await _persist(sb, save_tenant, tenant)
    sb.registry.put_tenant(tenant)
    return respond(_tenant_summary(tenant), 200, "Tenant created")


async def list_tenants(request: Request) -> Response:
    sb, partner = sandbox_of(request), principal_of(request).partner_id
    limit = query_int(
        request, "limit", sb.config.limits.default_page_size, 1, sb.config.limits.max_page_size
    )
    tenants = sb.registry.tenants_of(partner)
    cursor = request.query_params.get("cursor")
    if cursor:
        after = decode_cursor(cursor)
        ids = [t.id for t in tenants]
        if after not in ids:
            raise ApiError(400, "cursor is not one this server issued")
        tenants_page = tenants[ids.index(after) + 1 :]
    else:
        tenants_page = tenants
    page, more = tenants_page[:limit], len(tenants_page) > limit
    return respond(
        {
            "results": [_tenant_full(t) for t in page],
            "pagination": {
                "hasNextPage": more,
                "total": len(tenants),
                "cursor": encode_cursor(page[-1].id) if more else None,
            },
        }
    )


async def patch_tenant(request: Request) -> Response:
    sb, partner = sandbox_of(request), principal_of(request).partner_id
    tenant = sb.registry.tenants.get(request.path_params["id"])
    if tenant is None or tenant.partner_id != partner:
        raise ApiError(404, "tenant not found")
    body = _parse(_TenantPatch, await read_json(request, sb.config.limits.max_body_bytes))
    changes = body.model_dump(mode="json", include=body.model_fields_set, exclude={"externalId"})
    external_id = body.externalId or tenant.external_id
    clash = sb.registry.tenant_for(partner, external_id, "external_id")
    if clash is not None and clash.id != tenant.id:
        raise ApiError(409, f"a tenant with externalId {external_id!r} already exists")
    updated = Tenant(
        tenant.id, partner, external_id, {**tenant.doc, **changes}, tenant.created_at, time.time()
    )
    await _persist(sb, save_tenant, updated)
    sb.registry.put_tenant(updated)
    return respond(_tenant_patched(updated), 200, "Tenant updated")


async def list_schemas(request: Request) -> Response:
    sb, partner = sandbox_of(request), principal_of(request).partner_id
    return respond([schema_json(s) for s in sb.registry.schemas_of(partner)])


async def create_schema(request: Request) -> Response:
    sb, partner = sandbox_of(request), principal_of(request).partner_id
    body = _parse(_SchemaCreate, await read_json(request, sb.config.limits.max_body_bytes))
    if sb.registry.schema(partner, body.name) is not None:
        raise ApiError(
            409, f"a schema named {body.name!r} already exists (names are case-insensitive)"
        )
    doc = {
        "name": body.name,
        "pluralName": body.pluralName or body.name,
        "description": body.description,
        "category": body.category,
        "externalIdField": body.externalIdField,
        "schema": body.json_schema,
        "fieldsToExpose": body.fieldsToExpose or [],
        "exposeNameJsonPath": body.exposeNameJsonPath,
    }
    now = time.time()
    schema = _build(sb, partner, str(uuid.uuid4()), doc, 1, now, now)
    await _persist(sb, save_schema, schema)
    sb.registry.put_schema(schema)
    return respond(schema_json(schema), 200, "Schema definition created")


async def update_schema(request: Request) -> Response:
    sb, partner = sandbox_of(request), principal_of(request).partner_id
    current = sb.registry.schema(partner, request.path_params["schemaIdOrName"])
    if current is None:
        raise ApiError(404, "schema definition not found")
    raw = await read_json(request, sb.config.limits.max_body_bytes)
    if isinstance(raw, dict) and raw.get("name", current.name) != current.name:
        raise ApiError(400, "name is immutable")
    body = _parse(_SchemaFields, raw)
    given = body.model_dump(by_alias=True, include=body.model_fields_set, exclude_none=True)
    doc = {**current.doc, **given}
    schema = _build(
        sb, partner, current.id, doc, current.version + 1, current.created_at, time.time()
    )
    await _persist(sb, save_schema, schema)
    sb.registry.put_schema(schema)
    return respond(schema_json(schema), 200, "Schema definition updated")


def _build(
    sb: Sandbox,
    partner: str,
    sid: str,
    doc: dict[str, Any],
    version: int,
    created: float,
    updated: float,
) -> SchemaDef:
    try:
        return sb.registry.build_schema(partner, sid, doc, version, created, updated)
    except SchemaError as exc:
        raise ApiError(400, f"schema cannot be used: {exc}") from None


async def create_mapping(request: Request) -> Response:
    sb, partner = sandbox_of(request), principal_of(request).partner_id
    body = await read_json(request, sb.config.limits.max_body_bytes)
    if not isinstance(body, dict) or body.get("type") != "combined_schema":
        raise ApiError(400, 'a schema mapping must be an object with type "combined_schema"')
    unknown = sorted(sid for sid in _schema_ids(body) if sb.registry.schema(partner, sid) is None)
    if unknown:
        raise ApiError(400, f"unknown schemaId values: {', '.join(unknown)}")

    def save(conn: sqlite3.Connection, doc: dict[str, Any]) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO mappings (partner_id, doc, updated_at) VALUES (?,?,?)",
            (partner, orjson.dumps(doc), time.time()),
        )

    await _persist(sb, save, body)
    return respond(body, 200, "Schema mapping saved")


def _schema_ids(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {v for k, v in node.items() if k == "schemaId" and isinstance(v, str)}
        return found.union(*(_schema_ids(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_schema_ids(v) for v in node))
    return set()


def partner_routes() -> list[Route]:
    return [
        Route("/partner/tenants", create_tenant, methods=["POST"]),
        Route("/partner/tenants", list_tenants, methods=["GET"]),
        Route("/partner/tenants/{id}", patch_tenant, methods=["PATCH"]),
        Route("/partner/schema-definitions", list_schemas, methods=["GET"]),
        Route("/partner/schema-definitions", create_schema, methods=["POST"]),
        Route("/partner/schema-definitions/{schemaIdOrName}", update_schema, methods=["POST"]),
        Route("/partner/schema-mappings", create_mapping, methods=["POST"]),
    ]
