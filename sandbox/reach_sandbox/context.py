"""What a route knows about its request once the guard let it through."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from reach_sandbox.auth import Principal
from reach_sandbox.http import ApiError
from reach_sandbox.registry import SchemaDef, Tenant
from reach_sandbox.render import render_resource
from reach_sandbox.state import Sandbox, sandbox_of
from reach_sandbox.writes import Stored

__all__ = ["ApiContext", "api_context", "principal_of", "render_stored"]


class ApiContext:
    """The sandbox, the tenant the call acts for and, for resource routes, the schema."""

    def __init__(self, request: Request, needs_schema: bool) -> None:
        self.sandbox: Sandbox = sandbox_of(request)
        self.request_id: str = request.state.request_id
        self.arrived_at: float = request.state.arrived_at
        tenant = request.state.tenant
        if not isinstance(tenant, Tenant):
            raise ApiError(403, "no tenant for this request")
        self.tenant = tenant
        self._schema: SchemaDef | None = None
        if needs_schema:
            name = request.path_params["schema"]
            found = self.sandbox.registry.schema(tenant.partner_id, name)
            if found is None:
                raise ApiError(404, f"schema definition {name!r} not found")
            self._schema = found

    @property
    def schema(self) -> SchemaDef:
        if self._schema is None:
            raise RuntimeError("route declared no schema")
        return self._schema

    def render(self, schema_id: str, external_id: str, stored: Stored) -> dict[str, Any]:
        return render_stored(self.tenant, schema_id, external_id, stored)


def api_context(request: Request, needs_schema: bool = True) -> ApiContext:
    return ApiContext(request, needs_schema)


def principal_of(request: Request) -> Principal:
    principal = request.state.principal
    if not isinstance(principal, Principal):
        raise ApiError(401, "not authenticated")
    return principal


def render_stored(
    tenant: Tenant, schema_id: str, external_id: str, stored: Stored
) -> dict[str, Any]:
    return render_resource(
        resource_id=stored.id,
        schema_id=schema_id,
        partner_id=tenant.partner_id,
        tenant_id=tenant.id,
        external_id=external_id,
        created_at=stored.created_at,
        updated_at=stored.updated_at,
        data=stored.data,
    )
