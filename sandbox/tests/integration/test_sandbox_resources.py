"""Single-resource writes and reads on the real sandbox: merge, null-delete, validation, history."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reach_sandbox.testing import SandboxServer, running_sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


def test_upsert_merges_keeps_absent_fields_and_null_deletes(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        first = api.post(
            "/api/resources/customers",
            json={"data": {"customerId": "c1", "email": "a@example.com", "firstName": "Ada"}},
        )
        assert first.status_code == 200, first.text
        second = api.post(
            "/api/resources/customers/c1", json={"data": {"lastName": "Lovelace", "email": None}}
        )
        assert second.status_code == 200, second.text
        got = api.get("/api/resources/customers/c1")

    resource = second.json()["data"]
    assert resource["data"] == {"customerId": "c1", "firstName": "Ada", "lastName": "Lovelace"}
    assert resource["id"] == first.json()["data"]["id"]
    for snake, camel in (
        ("resource_external_id", "resourceExternalId"),
        ("schema_definition_id", "schemaDefinitionId"),
        ("business_id", "businessId"),
        ("platform_id", "platformId"),
        ("created_at", "createdAt"),
        ("updated_at", "updatedAt"),
    ):
        assert resource[snake] == resource[camel]
    assert resource["resourceExternalId"] == "c1"
    assert got.json()["data"]["result"]["data"] == resource["data"]


def test_nulling_a_required_field_is_a_validation_error(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    record = {
        "transactionId": "t1",
        "transactionDate": "2024-05-01T10:00:00Z",
        "transactionTotal": 5,
    }
    with sandbox.client(tenant) as api:
        assert api.post("/api/resources/transactions", json={"data": record}).status_code == 200
        response = api.post(
            "/api/resources/transactions/t1", json={"data": {"transactionTotal": None}}
        )
        missing = api.post("/api/resources/transactions", json={"data": {"transactionId": "t2"}})
        stored = api.get("/api/resources/transactions/t1").json()["data"]["result"]["data"]

    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert body["errors"][0]["field"] == "transactionTotal"
    assert body["errors"][0]["index"] == 0
    assert stored["transactionTotal"] == 5
    # A create without a required field fails as well: nothing to merge it with.
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["field"] == "transactionDate"


def test_unknown_fields_are_rejected_or_dropped_on_request(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    record = {"customerId": "c1", "email": "a@example.com", "favouriteColour": "teal"}
    with sandbox.client(tenant) as api:
        rejected = api.post("/api/resources/customers", json={"data": record})
        dropped = api.post(
            "/api/resources/customers",
            params={"ignoreUnknownFields": "true"},
            json={"data": record},
        )

    assert rejected.status_code == 400
    assert rejected.json()["errors"][0]["field"] == "favouriteColour"
    assert dropped.status_code == 200
    assert dropped.json()["data"]["data"] == {"customerId": "c1", "email": "a@example.com"}
    assert [v["data"] for v in sandbox.history(tenant, "customers", "c1")] == [
        {"customerId": "c1", "email": "a@example.com"}
    ]


def test_reject_mode_refuses_an_existing_resource(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        created = api.post(
            "/api/resources/customers",
            params={"onconflict": "reject"},
            json={"data": {"customerId": "c1", "firstName": "A"}},
        )
        conflict = api.post(
            "/api/resources/customers",
            params={"onconflict": "reject"},
            json={"data": {"customerId": "c1", "firstName": "B"}},
        )
        stored = api.get("/api/resources/customers/c1").json()["data"]["result"]["data"]

    assert created.status_code == 200
    assert conflict.status_code == 409
    assert conflict.json()["errors"][0]["code"] == "ALREADY_EXISTS"
    assert stored["firstName"] == "A"


def test_type_and_format_errors_name_the_field(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        response = api.post(
            "/api/resources/customers",
            json={"data": {"customerId": "c1", "email": "not-an-email", "smsOptOut": "yes"}},
        )
    assert response.status_code == 400
    fields = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert fields == {"email": "must be a valid email", "smsOptOut": "must be a boolean"}


def test_bad_json_and_wrong_body_shape_are_400(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        broken = api.post(
            "/api/resources/customers",
            content=b'{"data": {"customerId": ',
            headers={"Content-Type": "application/json"},
        )
        unwrapped = api.post("/api/resources/customers", json={"customerId": "c1"})
        batch_broken = api.post(
            "/api/resources/customers/batch",
            content=b"[not json",
            headers={"Content-Type": "application/json"},
        )
    for response in (broken, unwrapped, batch_broken):
        assert response.status_code == 400
        assert response.json()["success"] is False


def test_patch_get_delete_and_404s(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        missing_patch = api.patch("/api/resources/customers/nobody", json={"data": {"phone": "1"}})
        api.post("/api/resources/customers", json={"data": {"customerId": "c1", "phone": "1"}})
        patched = api.patch("/api/resources/customers/c1", json={"data": {"phone": "2"}})
        deleted = api.delete("/api/resources/customers/c1")
        gone = api.get("/api/resources/customers/c1")
        deleted_again = api.delete("/api/resources/customers/c1")
        unknown_schema = api.get("/api/resources/orders/c1")

    assert missing_patch.status_code == 404
    assert patched.json()["data"]["result"]["data"] == {"customerId": "c1", "phone": "2"}
    assert patched.json()["data"]["included"] == []
    assert deleted.status_code == 200
    assert gone.status_code == 404
    assert deleted_again.status_code == 404
    assert unknown_schema.status_code == 404
    history = sandbox.history(tenant, "customers", "c1")
    assert [(v["op"], v["data"]) for v in history] == [
        ("upsert", {"customerId": "c1", "phone": "1"}),
        ("patch", {"customerId": "c1", "phone": "2"}),
        ("delete", None),
    ]


def test_version_history_keeps_every_state_in_order(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    states = [{"firstName": "A"}, {"lastName": "B"}, {"firstName": None}, {"firstName": "C"}]
    with sandbox.client(tenant) as api:
        for state in states:
            response = api.post("/api/resources/customers/c1", json={"data": state})
            assert response.status_code == 200
    history = sandbox.history(tenant, "customers", "c1")
    assert [v["data"] for v in history] == [
        {"customerId": "c1", "firstName": "A"},
        {"customerId": "c1", "firstName": "A", "lastName": "B"},
        {"customerId": "c1", "lastName": "B"},
        {"customerId": "c1", "lastName": "B", "firstName": "C"},
    ]
    seqs = [v["seq"] for v in history]
    assert seqs == sorted(seqs)
    assert all(v["requestId"] and v["batchId"] is None for v in history)
    assert [v["arrivedAt"] for v in history] == sorted(v["arrivedAt"] for v in history)


def test_list_pages_with_cursor(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    with sandbox.client(tenant) as api:
        for n in range(5):
            api.post("/api/resources/customers", json={"data": {"customerId": f"c{n}"}})
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = api.get("/api/resources/customers", params=params).json()["data"]
            seen += [r["resourceExternalId"] for r in page["results"]]
            assert page["pagination"]["total"] == 5
            cursor = page["pagination"]["cursor"]
            if not page["pagination"]["hasNextPage"]:
                break
    assert seen == ["c0", "c1", "c2", "c3", "c4"]


def test_body_over_the_cap_is_413(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    cap = sandbox.config.limits.max_body_bytes
    with sandbox.client(tenant) as api:
        response = api.post(
            "/api/resources/customers/batch",
            content=b'{"resources": ["' + b"x" * cap + b'"]}',
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413


def test_ref_to_a_missing_resource_fails_a_single_write(sandbox: SandboxServer) -> None:
    tenant = sandbox.new_tenant()
    record = {
        "transactionId": "t1",
        "customerId": "ghost",
        "transactionDate": "2024-05-01T10:00:00Z",
        "transactionTotal": 1,
    }
    with sandbox.client(tenant) as api:
        missing = api.post("/api/resources/transactions", json={"data": record})
        api.post("/api/resources/customers", json={"data": {"customerId": "ghost"}})
        present = api.post("/api/resources/transactions", json={"data": record})
        got = api.get("/api/resources/transactions/t1").json()["data"]
        referenced = api.delete("/api/resources/customers/ghost")

    assert missing.status_code == 400
    assert missing.json()["errors"][0]["code"] == "MISSING_DEPENDENCY"
    assert present.status_code == 200
    assert [r["resourceExternalId"] for r in got["included"]] == ["ghost"]
    assert referenced.status_code == 409
