"""Faults and rate limits switched at run time on the real sandbox, and the admin reset."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from reach_sandbox.config import (
    BatchConfig,
    RateLimitConfig,
    RateLimitsConfig,
    ValidationConfig,
)
from reach_sandbox.testing import (
    SandboxFactory,
    SandboxServer,
    running_sandbox,
    sandbox_config,
)

CUSTOMERS = "/api/resources/customers"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


@pytest.fixture
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    servers = SandboxFactory(tmp_path_factory.mktemp("factory"))
    try:
        yield servers
    finally:
        servers.close()


def test_an_error_fault_switches_on_and_off_at_run_time(sandbox: SandboxServer) -> None:
    tenant, bystander = sandbox.new_tenant(), sandbox.new_tenant()
    fault = sandbox.add_fault(kind="error", status=503, tenant=tenant, path_prefix=CUSTOMERS)
    with sandbox.client(tenant) as api, sandbox.client(bystander) as other:
        failing = api.get(CUSTOMERS)
        other_path = api.get("/api/batches")
        other_tenant = other.get(CUSTOMERS)
        with sandbox.admin() as admin:
            listed = admin.get("/_admin/faults").json()["faults"]
            admin.delete(f"/_admin/faults/{fault}").raise_for_status()
        recovered = api.get(CUSTOMERS)

    assert failing.status_code == 503
    assert failing.json() == {"success": False, "message": "injected fault"}
    assert other_path.status_code == 200
    assert other_tenant.status_code == 200
    assert [f["id"] for f in listed] == [fault] and listed[0]["fired"] == 1
    assert recovered.status_code == 200


def test_an_error_after_apply_loses_the_answer_not_the_write(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    sandbox.add_fault(kind="error", status=502, tenant=tenant, after_apply=True, count=1)
    with sandbox.client(tenant) as api:
        lost = api.post(CUSTOMERS, json={"data": {"customerId": "c1"}})
        stored = api.get(f"{CUSTOMERS}/c1")
    assert lost.status_code == 502
    assert stored.status_code == 200  # count=1: the fault removed itself after firing


def test_latency_timeout_and_dropped_connections(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        sandbox.add_fault(kind="latency", ms=300, tenant=tenant, count=1)
        started = time.monotonic()
        slow = api.get(CUSTOMERS)
        slow_s = time.monotonic() - started
        sandbox.add_fault(kind="timeout", seconds=0.2, tenant=tenant, count=1)
        gateway = api.get(CUSTOMERS)
        sandbox.add_fault(kind="timeout", seconds=0.1, drop=True, tenant=tenant, count=1)
        with pytest.raises(httpx.RemoteProtocolError):
            api.get(CUSTOMERS)
        sandbox.add_fault(kind="timeout", seconds=5, tenant=tenant, count=1)
        with pytest.raises(httpx.ReadTimeout):
            api.get(CUSTOMERS, timeout=0.3)
        after = api.get(CUSTOMERS)
    assert slow.status_code == 200 and slow_s >= 0.3
    assert gateway.status_code == 504
    assert after.status_code == 200


def test_a_429_storm_carries_retry_after(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    sandbox.add_fault(kind="rate_limit", retry_after_seconds=7, tenant=tenant, count=2)
    with sandbox.client(tenant) as api:
        statuses = [api.get(CUSTOMERS) for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 429, 200]
    assert statuses[0].headers["Retry-After"] == "7"


def test_probabilistic_faults_hit_about_their_rate(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    fault = sandbox.add_fault(kind="error", status=500, rate=0.3, tenant=tenant)
    with sandbox.client(tenant) as api:
        codes = [api.get(CUSTOMERS).status_code for _ in range(200)]
    with sandbox.admin() as admin:
        admin.delete(f"/_admin/faults/{fault}").raise_for_status()
    assert set(codes) == {200, 500}
    assert 30 <= codes.count(500) <= 90


def test_invalid_faults_are_refused(sandbox: SandboxServer) -> None:
    with sandbox.admin() as admin:
        unknown_kind = admin.post("/_admin/faults", json={"kind": "meteor"})
        bad_field = admin.post("/_admin/faults", json={"kind": "error", "stauts": 503})
        unauthenticated = httpx.post(f"{sandbox.base_url}/_admin/faults", json={"kind": "error"})
    assert unknown_kind.status_code == 400
    assert bad_field.status_code == 400
    assert unauthenticated.status_code == 401


def test_rate_limits_answer_429_with_retry_after(factory: SandboxFactory) -> None:
    limits = RateLimitsConfig(per_tenant=RateLimitConfig(rate_per_second=2.0, burst=3))
    sandbox = factory.start(sandbox_config(rate_limits=limits))
    with sandbox.client("merchant-1") as api, sandbox.client("merchant-2") as other:
        responses = [api.get(CUSTOMERS) for _ in range(4)]
        other_tenant = other.get(CUSTOMERS)
        time.sleep(0.6)
        refilled = api.get(CUSTOMERS)

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert responses[0].headers["X-RateLimit-Limit"] == "3"
    assert responses[0].headers["X-RateLimit-Remaining"] == "2"
    assert responses[3].headers["Retry-After"] == "1"
    assert "X-RateLimit-Reset" in responses[3].headers
    assert other_tenant.status_code == 200
    assert refilled.status_code == 200


def test_rate_limits_change_at_run_time(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.admin() as admin:
        admin.put(
            "/_admin/rate-limits", json={"per_token": {"rate_per_second": 0.5, "burst": 1}}
        ).raise_for_status()
        try:
            with sandbox.client(tenant) as api:
                codes = [api.get(CUSTOMERS).status_code for _ in range(2)]
        finally:
            admin.put("/_admin/rate-limits", json={}).raise_for_status()
    assert codes == [200, 429]


def test_request_log_and_reset(factory: SandboxFactory) -> None:
    sandbox = factory.start()
    with sandbox.client("merchant-1") as api:
        api.post(
            "/api/resources/customers/batch",
            json={"resources": [{"customerId": "c1"}, {"customerId": "c2"}]},
        )
        api.get(CUSTOMERS)
    with sandbox.admin() as admin:
        logged = admin.get("/_admin/requests", params={"tenant": "merchant-1"}).json()["requests"]
        assert admin.post("/_admin/wait-idle").json()["idle"] is True
        before = admin.get("/_admin/counts").json()
        admin.post("/_admin/reset").raise_for_status()
        after = admin.get("/_admin/counts").json()
        tenants = admin.get("/_admin/tenants").json()["tenants"]

    assert [(r["method"], r["path"], r["status"], r["records"]) for r in logged] == [
        ("POST", "/api/resources/customers/batch", 202, 2),
        ("GET", CUSTOMERS, 200, None),
    ]
    assert logged[0]["tenantId"] == "tenant-1"
    assert before["resources"] == {"tenant-1": {"customers": 2}}
    assert after["resources"] == {} and after["versions"] == 0 and after["batches"] == {}
    assert {t["externalId"] for t in tenants} == {"merchant-1", "merchant-2", "merchant-3"}


def test_async_validation_and_idempotency_keys_behind_their_switches(
    factory: SandboxFactory,
) -> None:
    sandbox = factory.start(
        sandbox_config(
            validation=ValidationConfig(mode="async"),
            batches=BatchConfig(idempotency_keys=True),
        )
    )
    records = [{"customerId": "ok"}, {"customerId": "bad", "email": 7}, {"customerId": "x", "y": 1}]
    with sandbox.client("merchant-1") as api:
        accepted = api.post(f"{CUSTOMERS}/batch", json={"resources": records})
        no_id = api.post(f"{CUSTOMERS}/batch", json={"resources": [{"email": "a@b.co"}]})
        keyed = [
            api.post(
                f"{CUSTOMERS}/batch",
                headers={"Idempotency-Key": "k1"},
                json={"resources": [{"customerId": f"k{n}"}]},
            ).json()["data"]["batchId"]
            for n in range(2)
        ]
    batch = sandbox.wait_batch("merchant-1", accepted.json()["data"]["batchId"])
    assert accepted.status_code == 202
    assert no_id.status_code == 400  # a record without its external id cannot be reported later
    assert batch["status"] == "partial_success"
    assert batch["errors"]["summary"] == {"VALIDATION_ERROR": 2}
    assert batch["errors"]["details"]["bad"][0]["field"] == "email"
    assert keyed[0] == keyed[1]
    with sandbox.admin() as admin:
        one = admin.get("/_admin/resources/merchant-1/customers/k0")
        never = admin.get("/_admin/resources/merchant-1/customers/k1")
    assert one.status_code == 200 and one.json()["resource"]["data"] == {"customerId": "k0"}
    assert never.status_code == 404
