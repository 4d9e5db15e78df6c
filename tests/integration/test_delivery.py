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


@pytest.mark.parametrize(("count", "batch_over", "singles"), [(5, 8, True), (100, 8, False)])
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


async def test_gone_entities_are_deleted_from_the_tenant_that_has_them(
    sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str]
) -> None:
    first, second = sandbox.new_tenant(), sandbox.new_tenant()
    auth = {"mode": "jwt", "partner_id": PARTNER_ID, "secret": SecretStr(PARTNER_SECRET)}
    destination = Destination.model_validate({"base_url": sandbox.base_url, "auth": auth})
    last_sent = LastSentStore(redis_url, unique("delivery"))
    resource = _resource(batch_over=8)
    rows = {**_rows(first, 3).rows, "10": {"id": 10, "tenant": second, "email": "x@example.com"}}
    try:
        async with ReachClient(destination) as client:
            sent = await deliver_resource(
                "customers",
                resource,
                Recomputed(rows=rows, gone=[]),
                client=client,
                last_sent=last_sent,
                tenants=_NoTenants(),
            )
            # 1 stays; 0 and 2 (first tenant) and 10 (second tenant) are gone.
            gone = await deliver_resource(
                "customers",
                resource,
                Recomputed(rows={"1": rows["1"]}, gone=[0, 2, 10]),
                client=client,
                last_sent=last_sent,
                tenants=_NoTenants(),
            )
        assert sent.sent == 4
        assert (gone.sent, gone.skipped, gone.deleted, gone.dead) == (0, 1, 3, [])
        assert [v["op"] for v in sandbox.history(first, "customers", "0")][-1] == "delete"
        assert [v["op"] for v in sandbox.history(second, "customers", "10")][-1] == "delete"
        assert sandbox.history(first, "customers", "1")[-1]["op"] != "delete"
        remembered = await last_sent.get_many("customers", [0, 1, 2, 10])
        assert remembered is not None and set(remembered) == {"1"}
    finally:
        await last_sent.close()
