"""Credentials and tenancy on the real sandbox: 401s, 403s, and tenants that never meet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reach_sandbox.config import PartnerConfig
from reach_sandbox.testing import (
    STATIC_KEY,
    SandboxServer,
    mint_partner_jwt,
    mint_tenant_jwt,
    running_sandbox,
    sandbox_config,
)

OTHER_PARTNER = "other-partner"
OTHER_SECRET = "other-partner-secret-0123456789-abcdefg"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    base = sandbox_config()
    other = PartnerConfig.model_validate_json(
        f'{{"partner_id": "{OTHER_PARTNER}", "secret": "{OTHER_SECRET}"}}'
    )
    config = base.model_copy(update={"partners": (*base.partners, other)})
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), config) as server:
        yield server


def _status(sandbox: SandboxServer, token: str | None, tenant: str | None = "merchant-1") -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if tenant is not None:
        headers["reach-tenant-id"] = tenant
    with sandbox.client() as api:
        api.headers.clear()
        return api.get("/api/resources/customers", headers=headers).status_code


def test_missing_malformed_expired_and_forged_tokens_are_401(sandbox: SandboxServer) -> None:
    assert _status(sandbox, None) == 401
    assert _status(sandbox, "not-a-jwt") == 401
    assert _status(sandbox, mint_partner_jwt(ttl_s=-10)) == 401
    assert _status(sandbox, mint_partner_jwt(secret="wrong-secret-0123456789-0123456789ab")) == 401
    assert _status(sandbox, mint_partner_jwt(partner_id="unknown-partner")) == 401
    assert _status(sandbox, mint_partner_jwt(type="user")) == 401
    assert _status(sandbox, mint_partner_jwt(issued_at=4_000_000_000)) == 401
    assert _status(sandbox, mint_partner_jwt()) == 200


def test_a_static_key_works_and_can_be_revoked(sandbox: SandboxServer) -> None:
    assert _status(sandbox, STATIC_KEY) == 200
    assert _status(sandbox, "rk_test_some_other_key") == 401
    fault = sandbox.add_fault(kind="revoke", static_key=STATIC_KEY)
    try:
        assert _status(sandbox, STATIC_KEY) == 401
        assert _status(sandbox, mint_partner_jwt()) == 200
    finally:
        with sandbox.admin() as admin:
            admin.delete(f"/_admin/faults/{fault}").raise_for_status()
    assert _status(sandbox, STATIC_KEY) == 200


def test_tenant_header_is_required_and_resolves_id_or_external_id(sandbox: SandboxServer) -> None:
    token = mint_partner_jwt()
    assert _status(sandbox, token, tenant=None) == 400
    assert _status(sandbox, token, tenant="tenant-1") == 200
    assert _status(sandbox, token, tenant="merchant-1") == 200
    assert _status(sandbox, token, tenant="no-such-tenant") == 403
    with sandbox.client() as api:
        wrong_header = api.get("/api/resources/customers", headers={"X-Tenant-Id": "merchant-1"})
    assert wrong_header.status_code == 400  # X-Tenant-Id only behind a flag (§7 Q2)


def test_a_partner_never_reaches_another_partners_tenant(sandbox: SandboxServer) -> None:
    other_token = mint_partner_jwt(secret=OTHER_SECRET, partner_id=OTHER_PARTNER)
    assert _status(sandbox, other_token, tenant="merchant-1") == 403
    assert _status(sandbox, other_token, tenant="tenant-1") == 403
    with sandbox.client(token=other_token) as api:
        tenants = api.get("/partner/tenants").json()["data"]
    assert tenants["results"] == []


def test_one_tenant_never_sees_another_tenants_data(sandbox: SandboxServer) -> None:
    alice, bob = sandbox.new_tenant(), sandbox.new_tenant()
    with sandbox.client(alice) as api:
        api.post("/api/resources/customers", json={"data": {"customerId": "shared-id"}})
        batch_id = api.post(
            "/api/resources/customers/batch", json={"resources": [{"customerId": "c2"}]}
        ).json()["data"]["batchId"]
    sandbox.wait_batch(alice, batch_id)
    with sandbox.client(bob) as api:
        single = api.get("/api/resources/customers/shared-id")
        listed = api.get("/api/resources/customers").json()["data"]
        batch = api.get(f"/api/batches/{batch_id}")
        batches = api.get("/api/batches").json()["data"]
        deleted = api.delete("/api/resources/customers/shared-id")
    assert single.status_code == 404
    assert listed["results"] == [] and listed["pagination"]["total"] == 0
    assert batch.status_code == 404
    assert batches["results"] == []
    assert deleted.status_code == 404
    with sandbox.client(alice) as api:
        assert api.get("/api/resources/customers/shared-id").status_code == 200


def test_tenant_scoped_tokens_carry_their_tenant(sandbox: SandboxServer) -> None:
    token = mint_tenant_jwt("merchant-2")
    assert _status(sandbox, token, tenant=None) == 200
    assert _status(sandbox, token, tenant="merchant-3") == 403
    with sandbox.client(token=token) as api:
        assert api.get("/partner/tenants").status_code == 403


def test_partner_routes_create_tenants_and_schemas(sandbox: SandboxServer) -> None:
    with sandbox.client() as api:
        duplicate = api.post(
            "/partner/tenants",
            json={"external_id": "merchant-1", "name": "again", "locations": []},
        )
        incomplete = api.post("/partner/tenants", json={"external_id": "x"})
        created = api.post(
            "/partner/schema-definitions",
            json={
                "name": "Orders",
                "pluralName": "orders",
                "description": "orders",
                "category": "custom_schema",
                "external_id_field": "orderId",
                "schema": {
                    "type": "object",
                    "required": ["orderId"],
                    "properties": {
                        "orderId": {"type": "string"},
                        "buyer": {"$ref": "reach:schemas/customers"},
                    },
                },
            },
        )
        clash = api.post(
            "/partner/schema-definitions",
            json={
                "name": "ORDERS",
                "description": "x",
                "category": "custom_schema",
                "external_id_field": "id",
                "schema": {"properties": {"id": {"type": "string"}}},
            },
        )
        unsupported = api.post(
            "/partner/schema-definitions",
            json={
                "name": "weird",
                "description": "x",
                "category": "custom_schema",
                "external_id_field": "id",
                "schema": {"properties": {"id": {"type": "string", "if": {}}}},
            },
        )
        names = [s["name"] for s in api.get("/partner/schema-definitions").json()["data"]]
        written = api.post(
            "/api/resources/orders/o1",
            headers={"reach-tenant-id": "merchant-1"},
            json={"data": {"buyer": "nobody"}},
        )
    assert duplicate.status_code == 409
    assert incomplete.status_code == 400
    assert created.status_code == 200, created.text
    definition = created.json()["data"]
    assert definition["externalIdField"] == definition["external_id_field"] == "orderId"
    assert definition["referenceSchemas"] == [definition["reference_schemas"][0]]
    assert clash.status_code == 409
    assert unsupported.status_code == 400
    assert {"customers", "transactions", "locations", "Orders"} <= set(names)
    assert written.status_code == 400
    assert written.json()["errors"][0]["code"] == "MISSING_DEPENDENCY"
