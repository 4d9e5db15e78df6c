"""Delivery of one window's share on the real sandbox and Redis: which endpoint real time uses,
and what a tenant Reach refuses (403) becomes: held, never dead-lettered, probed one request at a
time, sent once a probe is accepted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxServer,
    running_sandbox,
)

from consumer.config import Destination, Resource, TenantProbe
from consumer.reach.client import ReachClient
from consumer.sink.dedup import LastSent, LastSentStore
from consumer.sink.delivery import DeliveryResult, deliver_resource
from consumer.sink.recompute import Recomputed
from consumer.sink.tenant_gate import TenantBlocks


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


def _row(tenant: str, n: int) -> dict[str, Any]:
    return {"id": n, "tenant": tenant, "email": f"c{n}@example.com"}


def _rows(tenant: str, count: int) -> Recomputed:
    rows: dict[str, dict[str, Any]] = {str(n): _row(tenant, n) for n in range(count)}
    return Recomputed(rows=rows, gone=[])


def _writes(sandbox: SandboxServer, tenant: str) -> list[str]:
    """The paths of the POSTs the sandbox saw for ``tenant``."""
    requests = sandbox.requests(tenant, path_prefix="/api/resources")
    return [r["path"] for r in requests if r["method"] == "POST"]


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


async def test_new_entities_go_one_by_one_and_known_ones_in_a_batch_with_new_realtime(
    sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str]
) -> None:
    """The guide's hybrid "real-time API for new records, batch API for updates"."""
    tenant = sandbox.new_tenant()
    auth = {"mode": "jwt", "partner_id": PARTNER_ID, "secret": SecretStr(PARTNER_SECRET)}
    destination = Destination.model_validate({"base_url": sandbox.base_url, "auth": auth})
    hybrid = _resource(batch_over=8).model_copy(
        update={
            "delivery": _resource(8).delivery.model_validate(
                {"new": "realtime", "updates": "batch", "window_ms": 100}
            )
        }
    )
    assert (hybrid.delivery.mode, hybrid.delivery.new) == ("batch", "realtime")
    last_sent = LastSentStore(redis_url, unique("hybrid"))
    try:
        # Reach has 0-2 already (an older state of each); 3-5 are new to it.
        await last_sent.record_sent("customers", [(n, LastSent(tenant, "old")) for n in range(3)])
        async with ReachClient(destination) as client:
            result = await deliver_resource(
                "customers",
                hybrid,
                _rows(tenant, 6),
                client=client,
                last_sent=last_sent,
                tenants=_NoTenants(),
            )
        assert (result.sent, result.skipped, result.dead) == (6, 0, [])
        writes = _writes(sandbox, tenant)
        assert sorted(writes) == ["/api/resources/customers"] * 3 + [
            "/api/resources/customers/batch"
        ]
        for n in range(6):
            (latest, *_) = reversed(sandbox.history(tenant, "customers", str(n)))
            assert latest["data"]["email"] == f"c{n}@example.com"
        # Now every one is known: a second round of changes goes as one batch.
        changed = Recomputed(
            rows={str(n): {**_row(tenant, n), "email": f"new{n}@example.com"} for n in range(6)},
            gone=[],
        )
        async with ReachClient(destination) as client:
            again = await deliver_resource(
                "customers",
                hybrid,
                changed,
                client=client,
                last_sent=last_sent,
                tenants=_NoTenants(),
            )
        assert again.sent == 6
        assert _writes(sandbox, tenant)[len(writes) :] == ["/api/resources/customers/batch"]
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


# --- a tenant Reach refuses ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _refuse(sandbox: SandboxServer, tenant: str) -> str:
    return sandbox.add_fault(
        kind="error", status=403, tenant=tenant, path_prefix="/api/", message="access revoked"
    )


def _remove_fault(sandbox: SandboxServer, fault_id: str) -> None:
    with sandbox.admin() as admin:
        admin.delete(f"/_admin/faults/{fault_id}").raise_for_status()


@pytest.mark.parametrize("batch_over", [8, 1], ids=["singles", "batch"])
async def test_a_refused_tenant_is_held_and_probed_one_request_at_a_time(
    sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str], batch_over: int
) -> None:
    ok, refused = sandbox.new_tenant(), sandbox.new_tenant()
    auth = {"mode": "jwt", "partner_id": PARTNER_ID, "secret": SecretStr(PARTNER_SECRET)}
    destination = Destination.model_validate({"base_url": sandbox.base_url, "auth": auth})
    last_sent = LastSentStore(redis_url, unique("delivery"))
    clock = _Clock()
    gate = TenantBlocks(TenantProbe(interval_s=30, max_interval_s=60), clock, clock)
    resource = _resource(batch_over)
    rows = {**_rows(ok, 5).rows, **{str(n): _row(refused, n) for n in range(100, 105)}}
    refused_ids = {str(n) for n in range(100, 105)}
    fault = _refuse(sandbox, refused)
    try:
        async with ReachClient(destination) as client:

            async def deliver() -> DeliveryResult:
                return await deliver_resource(
                    "customers",
                    resource,
                    Recomputed(rows=rows, gone=[]),
                    client=client,
                    last_sent=last_sent,
                    tenants=_NoTenants(),
                    gate=gate,
                )

            first = await deliver()
            assert (first.sent, first.dead) == (5, [])  # the other tenant went through
            assert [(h.tenant, set(h.ids), h.error.status) for h in first.held] == [
                (refused, refused_ids, 403)
            ]
            assert gate.is_blocked(refused) and not gate.is_blocked(ok)
            tried = len(sandbox.requests(refused))
            assert 1 <= tried <= 5

            # Blocked, no probe due: nothing of it is even sent.
            again = await deliver()
            assert (again.sent, again.skipped, again.dead) == (0, 5, [])
            assert {i for h in again.held for i in h.ids} == refused_ids
            assert len(sandbox.requests(refused)) == tried

            # The probe: one request with one record, refused again.
            clock.now = 30.0
            probed = await deliver()
            assert {i for h in probed.held for i in h.ids} == refused_ids
            assert len(sandbox.requests(refused)) == tried + 1
            assert gate.snapshot()[refused].probes == 1

            # Access restored: the next probe is accepted and the rest follow at once.
            _remove_fault(sandbox, fault)
            clock.now = 90.0
            resumed = await deliver()
            assert (resumed.sent, resumed.held, resumed.dead) == (5, [], [])
            assert not gate.is_blocked(refused)
        for n in (100, 104):
            assert sandbox.history(refused, "customers", str(n))[-1]["data"]["customerId"] == str(n)
    finally:
        sandbox.clear_faults()
        await last_sent.close()


async def test_a_move_away_from_a_refused_tenant_deletes_there_once_it_is_accepted(
    sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str]
) -> None:
    old, new = sandbox.new_tenant(), sandbox.new_tenant()
    auth = {"mode": "jwt", "partner_id": PARTNER_ID, "secret": SecretStr(PARTNER_SECRET)}
    destination = Destination.model_validate({"base_url": sandbox.base_url, "auth": auth})
    last_sent = LastSentStore(redis_url, unique("delivery"))
    clock = _Clock()
    gate = TenantBlocks(TenantProbe(interval_s=30, max_interval_s=60), clock, clock)
    resource = _resource(batch_over=8)
    try:
        async with ReachClient(destination) as client:

            async def deliver(tenant: str) -> DeliveryResult:
                return await deliver_resource(
                    "customers",
                    resource,
                    Recomputed(rows={"7": _row(tenant, 7)}, gone=[]),
                    client=client,
                    last_sent=last_sent,
                    tenants=_NoTenants(),
                    gate=gate,
                )

            assert (await deliver(old)).sent == 1
            fault = _refuse(sandbox, old)
            moved = await deliver(new)  # sent to the new tenant; the delete from the old held
            assert moved.sent == 1
            assert [(h.tenant, h.ids) for h in moved.held] == [(old, ("7",))]
            # Remembered as still in the old tenant, so the next attempt deletes it there.
            assert await last_sent.get_many("customers", [7]) == {"7": LastSent(old, "")}

            _remove_fault(sandbox, fault)
            clock.now = 30.0
            resumed = await deliver(new)
            assert (resumed.held, resumed.dead) == ([], [])
        assert sandbox.history(old, "customers", "7")[-1]["op"] == "delete"
        assert sandbox.history(new, "customers", "7")[-1]["data"]["customerId"] == "7"
        remembered = await last_sent.get_many("customers", [7])
        assert remembered is not None and remembered["7"].tenant == new
    finally:
        sandbox.clear_faults()
        await last_sent.close()
