"""The tenant routes on the real sandbox: pages of ``GET /partner/tenants`` and ``PATCH`` of the
onboarding flag, with the fields docs/reach-api.md §3.7 lists and no others, so a client that
leans on an undocumented field fails here rather than on Reach."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from reach_sandbox.testing import SandboxServer, running_sandbox

# §3.7: the fields of a tenant in a GET page, and of the PATCH answer.
LISTED = {
    "id",
    "name",
    "website",
    "externalId",
    "createdAt",
    "updatedAt",
    "userCount",
    "locations",
    "branding",
    "deletedAt",
    "dataIntegrationCompletedAt",
    "websiteTrackingCompletedAt",
    "uiDefaults",
    "smsOptInImageUrls",
}
PATCHED = {
    "id",
    "name",
    "website",
    "dataIntegrationComplete",
    "locations",
    "uiDefaults",
    "smsOptInImageUrls",
}
STAMP = "2024-05-01T12:30:45.123Z"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def _create(api: httpx.Client, external_id: str) -> str:
    response = api.post(
        "/partner/tenants", json={"external_id": external_id, "name": external_id, "locations": []}
    )
    response.raise_for_status()
    tenant_id: str = response.json()["data"]["id"]
    return tenant_id


def _all_pages(api: httpx.Client, limit: int) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every tenant by following ``cursor``, and the pagination block of each page."""
    tenants: list[dict[str, Any]] = []
    paginations: list[Any] = []
    params: dict[str, str | int] = {"limit": limit}
    while True:
        response = api.get("/partner/tenants", params=params)
        response.raise_for_status()
        data = response.json()["data"]
        tenants.extend(data["results"])
        paginations.append(data["pagination"])
        if not data["pagination"]["hasNextPage"]:
            return tenants, paginations
        params = {"limit": limit, "cursor": data["pagination"]["cursor"]}


def test_pages_follow_the_cursor_to_every_tenant_once(sandbox: SandboxServer) -> None:
    with sandbox.client() as api:
        created = [_create(api, f"paged-{n}") for n in range(5)]
        tenants, paginations = _all_pages(api, limit=2)
        too_big = api.get("/partner/tenants", params={"limit": 101})
        bad_cursor = api.get("/partner/tenants", params={"cursor": "not-ours"})
    ids = [t["id"] for t in tenants]
    assert len(ids) == len(set(ids)) == paginations[0]["total"]
    assert set(created) <= set(ids)
    assert all(p["hasNextPage"] and p["cursor"] for p in paginations[:-1])
    assert paginations[-1] == {"hasNextPage": False, "total": len(ids), "cursor": None}
    assert all(set(t) == LISTED for t in tenants)
    assert too_big.status_code == 400
    assert bad_cursor.status_code == 400


def test_patch_sets_data_integration_completed_at_for_that_tenant_only(
    sandbox: SandboxServer,
) -> None:
    with sandbox.client() as api:
        done, other = _create(api, "flag-done"), _create(api, "flag-other")
        patched = api.patch(f"/partner/tenants/{done}", json={"dataIntegrationCompletedAt": STAMP})
        listed = {t["id"]: t for t in _all_pages(api, limit=100)[0]}
        by_external_id = api.patch(
            "/partner/tenants/flag-other", json={"dataIntegrationCompletedAt": STAMP}
        )
        cleared = api.patch(f"/partner/tenants/{done}", json={"dataIntegrationCompletedAt": None})
    assert patched.status_code == 200, patched.text
    data = patched.json()["data"]
    assert set(data) == PATCHED
    assert data["id"] == done and data["dataIntegrationComplete"] is True
    assert listed[done]["dataIntegrationCompletedAt"] == STAMP
    assert listed[done]["externalId"] == "flag-done"
    assert listed[other]["dataIntegrationCompletedAt"] is None
    assert by_external_id.status_code == 404  # the path takes Reach's id
    assert cleared.json()["data"]["dataIntegrationComplete"] is False
