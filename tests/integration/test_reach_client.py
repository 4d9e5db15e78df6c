"""The Reach client against the real sandbox: writes land, refusals are isolated, errors classify.

One sandbox for the module; each test works in a fresh tenant, so tests never see each other's
data. Faults and rate limits are scoped to the test's tenant or restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from reach_devstack.process import free_port
from reach_sandbox.config import LimitsConfig
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxFactory,
    SandboxServer,
    running_sandbox,
    sandbox_config,
)

from consumer.config import Auth, Destination
from consumer.errors import BadRecord, ConfigurationError, Retryable
from consumer.reach.client import BatchState, ReachClient

WAIT_S = 20.0  # a deadline for batches to finish, not a sleep: polls stop as soon as they do


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def reach(sandbox: SandboxServer, secret: str = PARTNER_SECRET, **overrides: Any) -> ReachClient:
    auth = Auth(mode="jwt", partner_id=PARTNER_ID, secret=SecretStr(secret), token_ttl_s=3600)
    return ReachClient(Destination(base_url=sandbox.base_url, auth=auth, **overrides))


def customers(count: int, start: int = 0) -> dict[str, dict[str, Any]]:
    return {
        f"c{n}": {"customerId": f"c{n}", "email": f"c{n}@example.com"}
        for n in range(start, start + count)
    }


def stored(sandbox: SandboxServer, tenant: str, external_id: str) -> dict[str, Any] | None:
    with sandbox.admin() as admin:
        response = admin.get(f"/_admin/resources/{tenant}/customers/{external_id}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    data: dict[str, Any] = response.json()["resource"]["data"]
    return data


def count(sandbox: SandboxServer, tenant: str) -> int:
    with sandbox.admin() as admin:
        response = admin.get(
            "/_admin/resources", params={"tenant": tenant, "schema": "customers", "limit": 1}
        )
    response.raise_for_status()
    total: int = response.json()["total"]
    return total


async def test_upsert_one_lands(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    record = {"customerId": "c1", "email": "c1@example.com", "smsOptOut": True}
    async with reach(sandbox) as api:
        await api.upsert_one(tenant, "customers", record, external_id="c1")
    assert stored(sandbox, tenant, "c1") == record


async def test_2500_records_go_as_3_batches_and_all_land(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    records = customers(2500)
    async with reach(sandbox) as api:
        submission = await api.upsert_batch(tenant, "customers", records)
        ids = [b.batch_id for b in submission.batches]
        statuses = await api.wait_batches(tenant, ids, poll_interval_s=0.05, timeout_s=WAIT_S)

    assert submission.complete and not submission.rejected
    assert [b.record_count for b in submission.batches] == [1000, 1000, 500]
    assert [s.state for s in statuses.values()] == [BatchState.SUCCEEDED] * 3
    assert all(s.progress.successful == s.progress.total for s in statuses.values())
    assert count(sandbox, tenant) == 2500
    assert stored(sandbox, tenant, "c2499") == records["c2499"]


async def test_invalid_records_are_isolated_with_the_sandboxs_reason(
    sandbox: SandboxServer,
) -> None:
    tenant = sandbox.new_tenant()
    records = customers(50)
    records["c7"] = {"customerId": "c7", "email": 42}
    records["c31"] = {"customerId": "c31", "nickname": "not in the schema"}
    with sandbox.client(tenant) as raw:  # what the sandbox says about each alone
        said = {
            ext: raw.post("/api/resources/customers", json={"data": records[ext]}).json()
            for ext in ("c7", "c31")
        }
    async with reach(sandbox) as api:
        submission = await api.upsert_batch(tenant, "customers", records)
        ids = [b.batch_id for b in submission.batches]
        statuses = await api.wait_batches(tenant, ids, poll_interval_s=0.05, timeout_s=WAIT_S)

    rejected = {r.external_id: r for r in submission.rejected}
    assert set(rejected) == {"c7", "c31"}
    for ext, answer in said.items():
        error = answer["errors"][0]
        assert rejected[ext].reason == f"{error['code']}: {error['field']}: {error['message']}"
        assert rejected[ext].status == 400
        assert ext in (rejected[ext].body or "")
    assert [len(b.external_ids) for b in submission.batches] == [48]
    assert statuses[ids[0]].progress.successful == 48
    assert count(sandbox, tenant) == 48
    assert stored(sandbox, tenant, "c7") is None


async def test_delete_batch(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    async with reach(sandbox) as api:
        first = await api.upsert_batch(tenant, "customers", customers(5))
        await api.wait_batches(tenant, [first.batches[0].batch_id], poll_interval_s=0.05)
        deleted = await api.delete_batch(tenant, "customers", ["c1", "c3", "never-existed"])
        ids = [b.batch_id for b in deleted.batches]
        statuses = await api.wait_batches(tenant, ids, poll_interval_s=0.05, timeout_s=WAIT_S)

    assert deleted.batches[0].external_ids == ("c1", "c3", "never-existed")
    assert statuses[ids[0]].state is BatchState.SUCCEEDED
    assert statuses[ids[0]].failures == ()
    assert stored(sandbox, tenant, "c1") is None and stored(sandbox, tenant, "c3") is None
    assert count(sandbox, tenant) == 3


async def test_a_wrong_secret_is_a_configuration_error(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    wrong = "not-the-partner-secret-0123456789-abcdef"
    async with reach(sandbox, secret=wrong) as api:
        with pytest.raises(ConfigurationError) as caught:
            await api.upsert_one(tenant, "customers", {"customerId": "c1"})
        submission = await api.upsert_batch(tenant, "customers", customers(3))
    assert (caught.value.status, caught.value.scope) == (401, "tenant or credential")
    assert wrong not in str(caught.value)
    assert isinstance(submission.error, ConfigurationError) and len(submission.unsent) == 3


async def test_a_tenant_of_another_partner_is_a_configuration_error(
    sandbox: SandboxServer,
) -> None:
    async with reach(sandbox) as api:
        with pytest.raises(ConfigurationError) as caught:
            await api.upsert_one("nobody-knows-me", "customers", {"customerId": "c1"})
    assert caught.value.status == 403


async def test_an_unknown_schema_is_a_configuration_error(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    async with reach(sandbox) as api:
        with pytest.raises(ConfigurationError) as caught:
            await api.upsert_one(tenant, "no_such_schema", {"id": "x"})
        submission = await api.upsert_batch(tenant, "no_such_schema", {"x": {"id": "x"}})
    assert (caught.value.status, caught.value.scope) == (404, "schema")
    assert isinstance(submission.error, ConfigurationError) and submission.unsent == ("x",)


async def test_rate_limit_429_is_retryable_with_retry_after(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.admin() as admin:
        limits = {"per_tenant": {"rate_per_second": 0.5, "burst": 1}}
        admin.put("/_admin/rate-limits", json=limits).raise_for_status()
        try:
            async with reach(sandbox) as api:
                await api.upsert_one(tenant, "customers", {"customerId": "c1"})
                with pytest.raises(Retryable) as caught:
                    await api.upsert_one(tenant, "customers", {"customerId": "c2"})
        finally:
            admin.put("/_admin/rate-limits", json={}).raise_for_status()
    assert caught.value.retry_after_s == 2.0
    assert "429" in str(caught.value)


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "error", "status": 503, "retry_after_seconds": 4},
        {"kind": "timeout", "seconds": 0.1},
        {"kind": "timeout", "seconds": 0.1, "drop": True},
    ],
    ids=["503", "504", "dropped"],
)
async def test_server_faults_are_retryable(sandbox: SandboxServer, fault: dict[str, Any]) -> None:
    tenant = sandbox.new_tenant()
    sandbox.add_fault(tenant=tenant, count=2, **fault)
    async with reach(sandbox) as api:
        with pytest.raises(Retryable) as caught:
            await api.upsert_one(tenant, "customers", {"customerId": "c1"})
        submission = await api.upsert_batch(tenant, "customers", customers(2))
        await api.upsert_one(tenant, "customers", {"customerId": "c1"})  # the fault is spent
    assert isinstance(submission.error, Retryable) and submission.unsent == ("c0", "c1")
    if fault.get("status") == 503:
        assert caught.value.retry_after_s == 4.0


async def test_late_record_failures_name_their_external_ids(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    sandbox.add_fault(
        kind="record_failure", tenant=tenant, external_ids=["c1", "c3"], message="downstream no"
    )
    async with reach(sandbox) as api:
        submission = await api.upsert_batch(tenant, "customers", customers(5))
        batch_id = submission.batches[0].batch_id
        status = (await api.wait_batches(tenant, [batch_id], poll_interval_s=0.05))[batch_id]

    assert status.state is BatchState.SUCCEEDED and status.status == "partial_success"
    assert sorted((f.external_id or "", f.reason, f.code) for f in status.failures) == [
        ("c1", "INJECTED_FAILURE: downstream no", "INJECTED_FAILURE"),
        ("c3", "INJECTED_FAILURE: downstream no", "INJECTED_FAILURE"),
    ]
    assert status.unattributed_failures == 0 and not status.notes
    assert (status.progress.successful, status.progress.failed) == (3, 2)


async def test_a_413_from_the_server_splits_the_request(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The client's own cap is 1 MB, the server's only 20 kB: the server's 413 drives the split."""
    factory = SandboxFactory(tmp_path_factory.mktemp("small-bodies"))
    try:
        small = factory.start(sandbox_config(limits=LimitsConfig(max_body_bytes=20_000)))
        records = customers(1000)  # about 45 kB as one body
        async with reach(small) as api:
            submission = await api.upsert_batch("merchant-1", "customers", records)
            ids = [b.batch_id for b in submission.batches]
            await api.wait_batches("merchant-1", ids, poll_interval_s=0.05, timeout_s=WAIT_S)
        with small.admin() as admin:
            logged = admin.get("/_admin/requests", params={"tenant": "merchant-1"}).json()
    finally:
        factory.close()

    assert submission.complete and not submission.rejected
    assert sum(len(b.external_ids) for b in submission.batches) == 1000
    statuses = [r["status"] for r in logged["requests"] if r["path"].endswith("/batch")]
    assert 413 in statuses and statuses.count(202) == len(submission.batches)


async def test_a_single_record_the_sandbox_refuses_is_a_bad_record(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    async with reach(sandbox) as api:
        with pytest.raises(BadRecord) as caught:
            await api.upsert_one(tenant, "customers", {"customerId": "c1", "email": 7})
    assert (caught.value.status, caught.value.external_id) == (400, "c1")
    assert caught.value.body is not None and "email" in caught.value.body


def test_the_sandbox_is_on_loopback(sandbox: SandboxServer) -> None:
    assert httpx.URL(sandbox.base_url).host == "127.0.0.1"


async def test_an_unreachable_reach_is_retryable() -> None:
    port = free_port()  # nothing listens there
    auth = Auth(mode="jwt", partner_id=PARTNER_ID, secret=SecretStr(PARTNER_SECRET))
    async with ReachClient(
        Destination.model_validate({"base_url": f"http://127.0.0.1:{port}", "auth": auth})
    ) as api:
        with pytest.raises(Retryable):
            await api.upsert_one("merchant-1", "customers", {"customerId": "c1"})


async def test_an_answer_slower_than_the_timeout_is_retryable(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    sandbox.add_fault(tenant=tenant, count=1, kind="latency", ms=3000)
    async with reach(sandbox, timeout_s=0.5) as api:
        with pytest.raises(Retryable):
            await api.upsert_one(tenant, "customers", {"customerId": "c1"})
        await api.upsert_one(tenant, "customers", {"customerId": "c2"})  # the fault is spent
    assert stored(sandbox, tenant, "c2") is not None
