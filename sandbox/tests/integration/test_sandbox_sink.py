"""Sink mode (``PUT /_admin/sink``): a valid batch answers as in the strict mode, nothing applied;
the strict mode is the default and comes back with a reset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from reach_sandbox.testing import SandboxServer, running_sandbox

BATCH = "/api/resources/customers/batch"
# Differ per batch by nature, not by mode.
_PER_BATCH = {"batchId", "createdAt", "startedAt", "completedAt"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def _set_sink(sandbox: SandboxServer, enabled: bool) -> httpx.Response:
    with sandbox.admin() as admin:
        return admin.put("/_admin/sink", json={"enabled": enabled})


@pytest.fixture
def sink(sandbox: SandboxServer) -> Iterator[SandboxServer]:
    _set_sink(sandbox, True).raise_for_status()
    try:
        yield sandbox
    finally:
        _set_sink(sandbox, False).raise_for_status()


def _customers(count: int) -> list[dict[str, Any]]:
    return [{"customerId": f"c{n}", "email": f"c{n}@example.com"} for n in range(count)]


def _submit(sandbox: SandboxServer, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accept, status (after it finished), the batch as listed, and the stored resources."""
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        response = api.post(BATCH, json={"resources": records}, params={"onconflict": "upsert"})
        assert response.status_code == 202, response.text
        accepted = response.json()
        batch_id = accepted["data"]["batchId"]
        status = sandbox.wait_batch(tenant, batch_id)
        listed = api.get("/api/batches", params={"sortBy": "-createdAt"}).json()["data"]
        resources = api.get("/api/resources/customers").json()["data"]["pagination"]["total"]
    return {
        "accepted": accepted,
        "status": status,
        "listed": listed,
        "resources": resources,
        "batch_id": batch_id,
    }


def _without_per_batch(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _PER_BATCH}


def test_strict_is_the_default(sandbox: SandboxServer) -> None:
    with sandbox.admin() as admin:
        assert admin.get("/_admin/sink").json() == {"enabled": False}
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        response = api.post(BATCH, json={"resources": [{"customerId": "c1", "email": 42}]})
    assert response.status_code == 400


def test_a_valid_batch_answers_as_in_strict_mode(sandbox: SandboxServer) -> None:
    records = _customers(5)
    strict = _submit(sandbox, records)
    _set_sink(sandbox, True).raise_for_status()
    try:
        sunk = _submit(sandbox, records)
    finally:
        _set_sink(sandbox, False).raise_for_status()

    assert _without_per_batch(sunk["accepted"]["data"]) == _without_per_batch(
        strict["accepted"]["data"]
    )
    assert {k: v for k, v in sunk["accepted"].items() if k != "data"} == {
        k: v for k, v in strict["accepted"].items() if k != "data"
    }
    assert sunk["status"]["status"] == "success"
    assert _without_per_batch(sunk["status"]) == _without_per_batch(strict["status"])
    assert set(sunk["status"]) == set(strict["status"])
    assert sunk["status"]["completedAt"] is not None
    [listed] = sunk["listed"]["results"]
    assert listed["batchId"] == sunk["batch_id"] and listed["status"] == "success"
    assert _without_per_batch(listed) == _without_per_batch(strict["listed"]["results"][0])
    # The only difference: nothing was applied.
    assert strict["resources"] == 5
    assert sunk["resources"] == 0


def test_sink_keeps_the_request_checks_but_not_the_schema(sink: SandboxServer) -> None:
    tenant = sink.new_tenant()
    with sink.client(tenant) as api:
        wrong_type = api.post(BATCH, json={"resources": [{"customerId": "c1", "email": 42}]})
        no_id = api.post(BATCH, json={"resources": [{"email": "a@example.com"}]})
        too_many = api.post(BATCH, json={"resources": _customers(1001)})
        bad_body = api.post(BATCH, json={"records": []})
    with sink.client(tenant, token="not-a-token") as api:
        unauthorised = api.post(BATCH, json={"resources": _customers(1)})

    assert wrong_type.status_code == 202  # schema validation is what sink mode skips
    assert no_id.status_code == 400
    assert too_many.status_code == 400
    assert bad_body.status_code == 400
    assert unauthorised.status_code == 401


def test_deletes_still_apply_in_sink_mode(sink: SandboxServer) -> None:
    tenant = sink.new_tenant()
    with sink.client(tenant) as api:
        response = api.request("DELETE", BATCH, json={"externalIds": ["c1", "c2"]})
    assert response.status_code == 202
    batch = sink.wait_batch(tenant, response.json()["data"]["batchId"])
    assert batch["status"] == "success"


def test_reset_and_the_admin_route(sandbox: SandboxServer) -> None:
    with sandbox.admin() as admin:
        assert admin.put("/_admin/sink", json={"enabled": True}).json() == {"enabled": True}
        assert admin.put("/_admin/sink", json={"enabled": "yes"}).status_code == 400
        assert admin.put("/_admin/sink", json={"enabled": True, "x": 1}).status_code == 400
        admin.post("/_admin/reset").raise_for_status()
        assert admin.get("/_admin/sink").json() == {"enabled": False}
    with httpx.Client(base_url=sandbox.base_url) as anonymous:
        assert anonymous.get("/_admin/sink").status_code == 401
