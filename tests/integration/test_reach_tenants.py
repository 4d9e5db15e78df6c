"""The Reach client's tenant calls against the real sandbox: find a tenant across pages, mark its
historical data integrated (docs/reach-api.md §3.7, §6 "Tenant flags").

One sandbox for the module; each test creates the tenants it looks at. Requests go through a
recording transport, so a test can see that /partner/* calls carry no reach-tenant-id header.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from reach_sandbox.testing import PARTNER_ID, PARTNER_SECRET, SandboxServer, running_sandbox

from consumer.config import Auth, Destination
from consumer.errors import ConfigurationError, Retryable
from consumer.reach import tenants
from consumer.reach.client import ReachClient, TenantInfo

# 12:30:45.123456 at UTC+2: Reach gets the same instant in UTC, to the millisecond.
AT = datetime(2024, 5, 1, 14, 30, 45, 123456, tzinfo=timezone(timedelta(hours=2)))
AT_STAMP = "2024-05-01T12:30:45.123Z"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


class Recording(httpx.AsyncBaseTransport):
    """The real transport, keeping every request it sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def reach(sandbox: SandboxServer, transport: Recording, **overrides: Any) -> ReachClient:
    auth = Auth(
        mode="jwt", partner_id=PARTNER_ID, secret=SecretStr(PARTNER_SECRET), token_ttl_s=3600
    )
    destination = Destination(base_url=sandbox.base_url, auth=auth, **overrides)
    return ReachClient(destination, transport=transport)


def create_tenant(sandbox: SandboxServer, prefix: str = "tenant") -> tuple[str, str]:
    """A new tenant through ``POST /partner/tenants``: its Reach id and its external id."""
    external_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    with sandbox.client() as api:
        response = api.post(
            "/partner/tenants",
            json={"external_id": external_id, "name": external_id, "locations": []},
        )
    response.raise_for_status()
    tenant_id: str = response.json()["data"]["id"]
    return tenant_id, external_id


def completed_at(sandbox: SandboxServer) -> dict[str, str | None]:
    """``dataIntegrationCompletedAt`` of every tenant, by external id, as GET lists them."""
    found: dict[str, str | None] = {}
    params: dict[str, str] = {"limit": "100"}
    with sandbox.client() as api:
        while True:
            data = api.get("/partner/tenants", params=params).raise_for_status().json()["data"]
            found.update(
                {t["externalId"]: t["dataIntegrationCompletedAt"] for t in data["results"]}
            )
            if not data["pagination"]["hasNextPage"]:
                return found
            params = {"limit": "100", "cursor": data["pagination"]["cursor"]}


async def test_marking_one_tenant_sets_its_flag_only(sandbox: SandboxServer) -> None:
    done_id, done = create_tenant(sandbox)
    _, other = create_tenant(sandbox)
    transport = Recording()
    async with reach(sandbox, transport) as api:
        before = await api.find_tenant(done)
        marked = await api.mark_data_integration_complete(done, AT)
        after = await api.find_tenant(done)

    assert before == TenantInfo(done_id, done, None)
    assert marked == TenantInfo(done_id, done, AT_STAMP)
    assert after == marked
    flags = completed_at(sandbox)
    assert flags[done] == AT_STAMP
    assert flags[other] is None
    assert all("reach-tenant-id" not in r.headers for r in transport.sent)  # §2.1
    patch = next(r for r in transport.sent if r.method == "PATCH")
    assert patch.url.path == f"/partner/tenants/{done_id}"
    assert patch.content == f'{{"dataIntegrationCompletedAt":"{AT_STAMP}"}}'.encode()


async def test_find_walks_every_page(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenants, "PAGE_SIZE", 2)
    created = [create_tenant(sandbox, "paged") for _ in range(5)]
    last_id, last = created[-1]
    transport = Recording()
    async with reach(sandbox, transport) as api:
        found = await api.find_tenant(last)
        reads_to_find = list(transport.sent)
        absent = await api.find_tenant("no-such-tenant")

    assert found == TenantInfo(last_id, last, None)
    assert absent is None
    pages = -(-len(completed_at(sandbox)) // 2)  # the newest tenant is on the last page
    assert len(reads_to_find) == pages
    assert len(transport.sent) == 2 * pages
    assert all(r.method == "GET" and r.url.params["limit"] == "2" for r in transport.sent)
    cursors = [r.url.params.get("cursor") for r in reads_to_find]
    assert cursors[0] is None and all(cursors[1:]) and len(set(cursors)) == pages


async def test_an_unknown_tenant_is_a_configuration_error(sandbox: SandboxServer) -> None:
    transport = Recording()
    async with reach(sandbox, transport) as api:
        with pytest.raises(ConfigurationError) as caught:
            await api.mark_data_integration_complete("no-such-tenant", AT)

    assert "'no-such-tenant'" in str(caught.value)
    assert caught.value.scope == "tenant"
    assert [r.method for r in transport.sent] == ["GET"]  # nothing patched


async def test_mode_id_names_the_tenant_by_reach_id(sandbox: SandboxServer) -> None:
    tenant_id, external_id = create_tenant(sandbox)
    transport = Recording()
    async with reach(sandbox, transport, tenant_id_mode="id") as api:
        by_external_id = await api.find_tenant(external_id)
        marked = await api.mark_data_integration_complete(tenant_id, AT)

    assert by_external_id is None
    assert marked == TenantInfo(tenant_id, external_id, AT_STAMP)
    assert completed_at(sandbox)[external_id] == AT_STAMP


async def test_refusals_classify_as_other_requests_do(sandbox: SandboxServer) -> None:
    _, tenant = create_tenant(sandbox)
    sandbox.add_fault(kind="rate_limit", path_prefix="/partner/tenants", method="GET", count=1)
    sandbox.add_fault(kind="error", status=503, path_prefix="/partner/tenants/", count=1)
    async with reach(sandbox, Recording()) as api:
        with pytest.raises(Retryable) as throttled:
            await api.find_tenant(tenant)
        with pytest.raises(Retryable) as failed:
            await api.mark_data_integration_complete(tenant, AT)
        marked = await api.mark_data_integration_complete(tenant, AT)  # the faults are spent

    assert throttled.value.retry_after_s == 1.0 and not throttled.value.ambiguous
    assert failed.value.ambiguous  # a 5xx on the PATCH: Reach may have applied it
    assert marked.data_integration_completed_at == AT_STAMP


async def test_a_naive_time_is_refused_before_any_request(sandbox: SandboxServer) -> None:
    transport = Recording()
    async with reach(sandbox, transport) as api:
        with pytest.raises(ValueError, match="timezone"):
            await api.mark_data_integration_complete("merchant-1", datetime(2024, 5, 1))
    assert transport.sent == []
    assert tenants.utc_stamp(datetime(2024, 5, 1, tzinfo=UTC)) == "2024-05-01T00:00:00.000Z"
