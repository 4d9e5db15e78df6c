"""Delivery of one window's share on the real sandbox and Redis: which endpoint real time uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from consumer.config import Destination, Resource
from consumer.dedup import LastSentStore
from consumer.delivery import deliver_resource
from consumer.reach.client import ReachClient
from consumer.recompute import Recomputed
from tests.integration.sandbox_fixtures import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxServer,
    running_sandbox,
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


class _NoTenants:
    async def tenants(self, resource: Resource) -> list[str]:
        return []


def _resource(batch_over: int) -> Resource:
    return Resource.model_validate(
        {
            "reach_schema": "customers",
            "key": "id",
            "tenant": "tenant",
            "triggers": [{"table": "public.customers", "id": "id"}],
            "query": "SELECT * FROM customers WHERE id = ANY(%(ids)s)",
            "mapping": {
                "customerId": {"column": "id", "format": "string"},
                "email": {"column": "email", "pii": "send"},
            },
            "delivery": {"mode": "realtime", "window_ms": 100, "batch_over": batch_over},
        }
    )


def _rows(tenant: str, count: int) -> Recomputed:
    rows: dict[str, dict[str, Any]] = {
        str(n): {"id": n, "tenant": tenant, "email": f"c{n}@example.com"} for n in range(count)
    }
    return Recomputed(rows=rows, gone=[])


def _writes(sandbox: SandboxServer, tenant: str) -> list[str]:
    """The paths of the POSTs the sandbox saw for ``tenant``."""
    with sandbox.admin() as admin:
        response = admin.get(
            "/_admin/requests",
            params={"tenant": tenant, "pathPrefix": "/api/resources", "limit": 10_000},
        )
    response.raise_for_status()
    return [r["path"] for r in response.json()["requests"] if r["method"] == "POST"]


@pytest.mark.parametrize(("count", "batch_over", "singles"), [(5, 64, True), (100, 64, False)])
async def test_real_time_sends_singles_and_a_backlog_through_the_batch_endpoint(
    sandbox: SandboxServer,
    redis_url: str,
    unique: Callable[[str], str],
    count: int,
    batch_over: int,
    singles: bool,
) -> None:
    tenant = sandbox.new_tenant()
    auth = {"mode": "jwt", "partner_id": PARTNER_ID, "secret": SecretStr(PARTNER_SECRET)}
    destination = Destination.model_validate({"base_url": sandbox.base_url, "auth": auth})
    last_sent = LastSentStore(redis_url, unique("delivery"))
    try:
        async with ReachClient(destination) as client:
            result = await deliver_resource(
                "customers",
                _resource(batch_over),
                _rows(tenant, count),
                client=client,
                last_sent=last_sent,
                tenants=_NoTenants(),
            )
        assert (result.sent, result.skipped, result.dead) == (count, 0, [])
        writes = _writes(sandbox, tenant)
        if singles:
            assert sorted(writes) == ["/api/resources/customers"] * count
        else:
            assert writes == ["/api/resources/customers/batch"]
        for n in (0, count - 1):
            (latest, *_) = reversed(sandbox.history(tenant, "customers", str(n)))
            assert latest["data"]["email"] == f"c{n}@example.com"
    finally:
        await last_sent.close()
