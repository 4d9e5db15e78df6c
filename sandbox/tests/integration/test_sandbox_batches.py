"""Asynchronous batches on the real sandbox: limits, status, late failures, $ref waits, deletes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from reach_sandbox.testing import SandboxServer, running_sandbox

BATCH = "/api/resources/customers/batch"
TX_BATCH = "/api/resources/transactions/batch"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def _customers(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"customerId": f"c{n}", "email": f"c{n}@example.com"} for n in range(start, start + count)
    ]


def _tx(tid: str, customer: str, total: float = 10) -> dict[str, Any]:
    return {
        "transactionId": tid,
        "customerId": customer,
        "transactionDate": "2024-05-01T10:00:00Z",
        "transactionTotal": total,
    }


def test_batch_limit_is_1000_records(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        over = api.post(BATCH, json={"resources": _customers(1001)})
        at_limit = api.post(BATCH, json={"resources": _customers(1000)})
        too_many_ids = api.request(
            "DELETE", BATCH, json={"externalIds": [f"c{n}" for n in range(1001)]}
        )

    assert over.status_code == 400
    assert "1001" in over.json()["message"]
    assert too_many_ids.status_code == 400
    assert at_limit.status_code == 202
    accepted = at_limit.json()["data"]
    assert accepted["recordCount"] == 1000
    batch = sandbox.wait_batch(tenant, accepted["batchId"])
    assert batch["status"] == "success"
    assert batch["progress"]["successfulRecords"] == 1000


def test_an_invalid_record_refuses_the_whole_request(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    records = [*_customers(3), {"customerId": "bad", "email": 42}, {"email": "no-id@example.com"}]
    with sandbox.client(tenant) as api:
        response = api.post(BATCH, json={"resources": records})
        listed = api.get("/api/resources/customers").json()["data"]["pagination"]["total"]
        batches = api.get("/api/batches").json()["data"]["pagination"]["total"]

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {(e["index"], e["field"]) for e in errors} == {(3, "email"), (4, "customerId")}
    assert errors[0]["externalId"] == "bad"
    assert listed == 0 and batches == 0


def test_batch_status_goes_pending_processing_success(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    sandbox.add_fault(kind="batch_delay", seconds=0.6, tenant=tenant)
    with sandbox.client(tenant) as api:
        first = api.post(BATCH, json={"resources": _customers(2)}).json()["data"]["batchId"]
        second = api.post(BATCH, json={"resources": _customers(2, 2)}).json()["data"]["batchId"]
        seen_first = api.get(f"/api/batches/{first}").json()["data"]["status"]
        seen_second = api.get(f"/api/batches/{second}").json()["data"]["status"]
    sandbox.clear_faults()
    done = sandbox.wait_batch(tenant, second)

    # The tenant's batches run in order: the first is held in processing, the second waits.
    assert seen_first == "processing"
    assert seen_second == "pending"
    assert done["status"] == "success"
    assert done["startedAt"] and done["completedAt"] and done["createdAt"]
    assert done["batchType"] == "PARTNER_RESOURCE_JSON_INGEST"
    assert done["schemaName"] == "customers"


def test_late_per_record_failures_name_external_ids(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    sandbox.add_fault(
        kind="record_failure",
        tenant=tenant,
        external_ids=["c1", "c3"],
        message="downstream rejected it",
    )
    with sandbox.client(tenant) as api:
        batch_id = api.post(BATCH, json={"resources": _customers(5)}).json()["data"]["batchId"]
        batch = sandbox.wait_batch(tenant, batch_id)
        stored = api.get("/api/resources/customers").json()["data"]["pagination"]["total"]
    sandbox.clear_faults()

    assert batch["status"] == "partial_success"
    assert batch["progress"] == {
        "totalRecords": 5,
        "processedRecords": 5,
        "successfulRecords": 3,
        "pendingRecords": 0,
        "failedRecords": 2,
        "successRate": 0.6,
    }
    assert batch["errors"]["summary"] == {"INJECTED_FAILURE": 2}
    assert set(batch["errors"]["details"]) == {"c1", "c3"}
    assert batch["errors"]["details"]["c1"][0]["message"] == "downstream rejected it"
    assert stored == 3


def test_reject_conflicts_and_patches_of_absent_records_fail_late(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        seeded = api.post(BATCH, json={"resources": _customers(2)}).json()["data"]["batchId"]
        sandbox.wait_batch(tenant, seeded)
        rejected = api.post(
            BATCH, params={"onconflict": "reject"}, json={"resources": _customers(3)}
        ).json()["data"]["batchId"]
        patched = api.patch(
            BATCH,
            json={
                "resources": [
                    {"customerId": "c0", "phone": "9"},
                    {"customerId": "zz", "phone": "9"},
                ]
            },
        )
    conflict = sandbox.wait_batch(tenant, rejected)
    patch = sandbox.wait_batch(tenant, patched.json()["data"]["batchId"])

    assert conflict["status"] == "partial_success"
    assert set(conflict["errors"]["details"]) == {"c0", "c1"}
    assert conflict["errors"]["summary"] == {"ALREADY_EXISTS": 2}
    assert patch["batchType"] == "PARTNER_RESOURCE_BATCH_PATCH"
    assert patch["errors"]["summary"] == {"NOT_FOUND": 1}
    assert sandbox.history(tenant, "customers", "c0")[-1]["data"]["phone"] == "9"


def test_all_records_failing_makes_the_batch_failed(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        batch_id = api.post(TX_BATCH, json={"resources": [_tx("t1", "nobody")]}).json()
    batch = sandbox.wait_batch(tenant, batch_id["data"]["batchId"])
    assert batch["status"] == "failed"
    assert batch["errors"]["details"]["t1"][0]["code"] == "MISSING_DEPENDENCY"
    assert batch["errors"]["details"]["t1"][0]["field"] == "customerId"


def test_ref_waits_pending_then_resolves_when_the_target_arrives(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        accepted = api.post(
            TX_BATCH,
            params={"dependencyWaitTimeout": "60"},
            json={"resources": [_tx("t1", "c9"), _tx("t2", "c0")]},
        )
        api.post("/api/resources/customers", json={"data": {"customerId": "c0"}})
        batch_id = accepted.json()["data"]["batchId"]
        parked = sandbox.wait_batch(tenant, batch_id, pending_ok=True)
        assert api.get("/api/resources/transactions/t1").status_code == 404
        api.post(BATCH, json={"resources": [{"customerId": "c9"}]})
        resolved = sandbox.wait_batch(tenant, batch_id)
        t1 = api.get("/api/resources/transactions/t1")

    assert parked["status"] == "processing"
    assert parked["progress"]["pendingRecords"] >= 1
    waiting = {p["resourceExternalId"]: p for p in parked["pendingResources"]}
    assert waiting["t1"]["missingDependencies"][0]["externalId"] == "c9"
    assert waiting["t1"]["missingDependencies"][0]["schemaName"] == "customers"
    assert waiting["t1"]["expiresAt"]
    assert resolved["status"] == "success"
    assert resolved["progress"]["pendingRecords"] == 0
    assert resolved["progress"]["successfulRecords"] == 2
    assert t1.status_code == 200
    assert [r["resourceExternalId"] for r in t1.json()["data"]["included"]] == ["c9"]
    assert sandbox.history(tenant, "transactions", "t1")[0]["batchId"] == batch_id


def test_pending_records_expire_when_the_target_never_arrives(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    started = time.monotonic()
    with sandbox.client(tenant) as api:
        batch_id = api.post(
            TX_BATCH,
            params={"dependencyWaitTimeout": "1"},
            json={"resources": [_tx("t1", "ghost")]},
        ).json()["data"]["batchId"]
        batch = sandbox.wait_batch(tenant, batch_id, timeout_s=10)
        stored = api.get("/api/resources/transactions/t1")

    assert time.monotonic() - started >= 1.0
    assert batch["status"] == "failed"
    assert batch["errors"]["summary"] == {"DEPENDENCY_TIMEOUT": 1}
    assert "ghost" in batch["errors"]["details"]["t1"][0]["message"]
    assert stored.status_code == 404


def test_within_a_batch_later_records_win_in_order(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    records = [
        {"customerId": "c1", "firstName": "A"},
        {"customerId": "c1", "lastName": "B"},
        {"customerId": "c1", "firstName": None},
    ]
    with sandbox.client(tenant) as api:
        batch_id = api.post(BATCH, json={"resources": records}).json()["data"]["batchId"]
    sandbox.wait_batch(tenant, batch_id)
    history = sandbox.history(tenant, "customers", "c1")
    assert [v["data"] for v in history] == [
        {"customerId": "c1", "firstName": "A"},
        {"customerId": "c1", "firstName": "A", "lastName": "B"},
        {"customerId": "c1", "lastName": "B"},
    ]
    assert {v["batchId"] for v in history} == {batch_id}


def test_batch_delete_skips_referenced_unless_cascade(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        api.post("/api/resources/customers", json={"data": {"customerId": "c1"}})
        api.post("/api/resources/customers", json={"data": {"customerId": "c2"}})
        api.post("/api/resources/transactions", json={"data": _tx("t1", "c1")})
        body = {"externalIds": ["c1", "c2", "never-existed"]}
        preview = api.request("DELETE", BATCH, json={**body, "dryRun": True})
        plain = api.request("DELETE", BATCH, json=body).json()["data"]["batchId"]
        skipped = sandbox.wait_batch(tenant, plain)
        cascade = api.request("DELETE", BATCH, json={**body, "cascade": True}).json()["data"]
        cascaded = sandbox.wait_batch(tenant, cascade["batchId"])
        left = api.get("/api/resources/transactions").json()["data"]["pagination"]["total"]

    assert preview.status_code == 200
    assert preview.json()["data"]["totalDeleteCount"] == 1
    assert preview.json()["data"]["skippedCount"] == 1
    assert skipped["batchType"] == "PARTNER_RESOURCE_BATCH_DELETE"
    assert skipped["status"] == "partial_success"
    assert skipped["progress"]["successfulRecords"] == 2  # c2, and the absent id
    assert skipped["errors"]["summary"] == {"REFERENCED": 1}
    assert cascaded["status"] == "success"
    assert left == 0
    assert sandbox.history(tenant, "transactions", "t1")[-1]["op"] == "delete"


def test_delete_all_and_batch_list(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        first = api.post(BATCH, json={"resources": _customers(4)}).json()["data"]["batchId"]
        sandbox.wait_batch(tenant, first)
        wipe = api.request("DELETE", BATCH, json={"deleteAll": True}).json()["data"]
        sandbox.wait_batch(tenant, wipe["batchId"])
        left = api.get("/api/resources/customers").json()["data"]["pagination"]["total"]
        listed = api.get("/api/batches", params={"limit": "1"}).json()["data"]
        rest = api.get("/api/batches", params={"cursor": listed["pagination"]["cursor"]})
        deletes = api.get("/api/batches", params={"batchType": "PARTNER_RESOURCE_BATCH_DELETE"})

    assert wipe["recordCount"] == 4
    assert left == 0
    assert listed["pagination"] == {
        "hasNextPage": True,
        "total": 2,
        "cursor": listed["pagination"]["cursor"],
    }
    assert [b["batchId"] for b in listed["results"]] == [wipe["batchId"]]
    assert [b["batchId"] for b in rest.json()["data"]["results"]] == [first]
    assert [b["batchId"] for b in deletes.json()["data"]["results"]] == [wipe["batchId"]]


def test_a_later_write_supersedes_a_record_still_waiting(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        api.post("/api/resources/customers", json={"data": {"customerId": "c0"}})
        waiting = api.post(
            TX_BATCH,
            params={"dependencyWaitTimeout": "60"},
            json={"resources": [_tx("t1", "late", 1)]},
        ).json()["data"]["batchId"]
        sandbox.wait_batch(tenant, waiting, pending_ok=True)
        newer = api.post(TX_BATCH, json={"resources": [_tx("t1", "c0", 2)]}).json()["data"]
        api.post("/api/resources/customers", json={"data": {"customerId": "late"}})
    first = sandbox.wait_batch(tenant, waiting)
    second = sandbox.wait_batch(tenant, newer["batchId"])
    assert second["status"] == "success"
    assert first["status"] == "failed"
    assert first["errors"]["summary"] == {"SUPERSEDED": 1}
    history = sandbox.history(tenant, "transactions", "t1")
    assert [v["data"]["transactionTotal"] for v in history] == [2]
