"""The schema registry double answers as Confluent Schema Registry does: global ids that stay,
one id per distinct schema, Confluent's error codes, its content types, and its state kept in a
file so that a restarted registry serves the same ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reach_devstack.registry.app import CONTENT_TYPE, build_app
from reach_devstack.registry.store import RegistryError, SchemaStore, parse_avro
from starlette.testclient import TestClient

CUSTOMER = {
    "type": "record",
    "name": "Value",
    "namespace": "shop.public.customers",
    "fields": [{"name": "id", "type": "long"}, {"name": "email", "type": "string"}],
}
KEY = {"type": "record", "name": "Key", "fields": [{"name": "id", "type": "long"}]}
HEADERS = {"Content-Type": CONTENT_TYPE}


def _text(schema: Any, **dumps: Any) -> str:
    return json.dumps(schema, **dumps)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_app(tmp_path / "schemas.json")) as test_client:
        yield test_client


def _register(client: TestClient, subject: str, schema: Any) -> Any:
    body = {"schema": schema if isinstance(schema, str) else _text(schema)}
    return client.post(f"/subjects/{subject}/versions", json=body, headers=HEADERS)


def _error(response: Any) -> tuple[int, int]:
    body = response.json()
    assert set(body) == {"error_code", "message"}
    return response.status_code, body["error_code"]


# --- ids ---------------------------------------------------------------------------------------


def test_ids_start_at_one_and_the_same_schema_keeps_its_id(client: TestClient) -> None:
    first = _register(client, "shop-value", CUSTOMER)
    assert first.status_code == 200
    assert first.json() == {"id": 1}
    assert first.headers["content-type"] == CONTENT_TYPE
    # Whitespace and key order do not make another schema.
    reordered = _text(dict(reversed(list(CUSTOMER.items()))), indent=4)
    assert _register(client, "shop-value", reordered).json() == {"id": 1}
    assert _register(client, "shop-key", KEY).json() == {"id": 2}
    assert client.get("/subjects/shop-value/versions").json() == [1]


def test_the_same_schema_under_another_subject_gets_the_same_global_id(
    client: TestClient,
) -> None:
    assert _register(client, "a-value", KEY).json() == {"id": 1}
    assert _register(client, "b-value", CUSTOMER).json() == {"id": 2}
    assert _register(client, "b-value", KEY).json() == {"id": 1}
    assert client.get("/subjects/b-value/versions").json() == [1, 2]
    assert client.get("/schemas/ids/1/versions").json() == [
        {"subject": "a-value", "version": 1},
        {"subject": "b-value", "version": 2},
    ]
    assert client.get("/schemas/ids/1/subjects").json() == ["a-value", "b-value"]


def test_equal_spellings_of_a_schema_share_an_id_and_a_doc_makes_another() -> None:
    namespaced = {"type": "record", "name": "K", "namespace": "n", "fields": KEY["fields"]}
    full_name = {"type": "record", "name": "n.K", "fields": [{"name": "id", "type": "long"}]}
    boxed = {"type": "record", "name": "n.K", "fields": [{"name": "id", "type": {"type": "long"}}]}
    documented = {**full_name, "doc": "the key"}
    keys = {parse_avro(_text(s))[1] for s in (namespaced, full_name, boxed)}
    assert len(keys) == 1
    assert parse_avro(_text(documented))[1] not in keys


def test_get_schema_by_id_answers_the_schema_without_a_schema_type_for_avro(
    client: TestClient,
) -> None:
    _register(client, "shop-value", _text(CUSTOMER, indent=2))
    # Extra parameters the clients send (subject, format) are accepted and ignored.
    answer = client.get("/schemas/ids/1", params={"subject": "shop-value", "format": "x"})
    assert answer.json() == {"schema": json.dumps(CUSTOMER, separators=(",", ":"))}
    assert client.get("/schemas/ids/1", params={"fetchMaxId": "true"}).json()["maxId"] == 1
    assert client.get("/schemas/ids/1/schema").json() == CUSTOMER
    assert _error(client.get("/schemas/ids/7")) == (404, 40403)
    assert client.get("/schemas/ids/7").json()["message"] == "Schema 7 not found"


# --- subjects, versions, lookups -----------------------------------------------------------------


def test_versions_latest_and_their_errors(client: TestClient) -> None:
    _register(client, "s", KEY)
    _register(client, "s", CUSTOMER)
    latest = client.get("/subjects/s/versions/latest").json()
    assert latest == {
        "subject": "s",
        "version": 2,
        "id": 2,
        "schema": json.dumps(CUSTOMER, separators=(",", ":")),
    }
    assert client.get("/subjects/s/versions/1").json()["id"] == 1
    assert client.get("/subjects/s/versions/2/schema").json() == CUSTOMER
    assert _error(client.get("/subjects/s/versions/3")) == (404, 40402)
    assert _error(client.get("/subjects/nope/versions/1")) == (404, 40401)
    assert _error(client.get("/subjects/nope/versions")) == (404, 40401)
    for bad in ("0", "abc", "-2"):
        assert _error(client.get(f"/subjects/s/versions/{bad}")) == (422, 42202)
    assert client.get("/subjects").json() == ["s"]


def test_lookup_finds_the_version_holding_a_schema_or_says_which_is_missing(
    client: TestClient,
) -> None:
    _register(client, "s", KEY)
    found = client.post("/subjects/s", json={"schema": _text(KEY, indent=1)}, headers=HEADERS)
    assert found.json() == {
        "subject": "s",
        "version": 1,
        "id": 1,
        "schema": json.dumps(KEY, separators=(",", ":")),
    }
    other = client.post("/subjects/s", json={"schema": _text(CUSTOMER)}, headers=HEADERS)
    assert _error(other) == (404, 40403)
    unknown = client.post("/subjects/x", json={"schema": _text(KEY)}, headers=HEADERS)
    assert _error(unknown) == (404, 40401)


@pytest.mark.parametrize(
    "schema",
    [
        "not json",
        _text({"type": "nope"}),
        _text({"type": "record", "name": "R"}),  # no fields
        _text({"type": "record", "name": "1R", "fields": []}),  # a bad name
        _text({"type": "record", "name": "R", "fields": [KEY["fields"][0]] * 2}),  # a repeat
        _text(["int", "int"]),  # a union with a repeat
        _text({"type": "fixed", "name": "F"}),  # no size
        _text(
            {
                "type": "record",
                "name": "R",
                "fields": [{"name": "a", "type": "int", "default": "x"}],
            }
        ),
        "",
    ],
)
def test_a_schema_that_is_not_avro_is_refused_with_42201(client: TestClient, schema: str) -> None:
    assert _error(_register(client, "s", schema)) == (422, 42201)
    assert client.get("/subjects").json() == []


def test_other_schema_types_and_references_are_refused_rather_than_stored(
    client: TestClient,
) -> None:
    json_schema = {"schema": '{"type": "object"}', "schemaType": "JSON"}
    refs = {"schema": _text(KEY), "references": [{"name": "x", "subject": "y", "version": 1}]}
    for body in (json_schema, refs):
        answer = client.post("/subjects/s/versions", json=body, headers=HEADERS)
        assert _error(answer) == (422, 42201)
    # What the Python client sends by default is fine: schemaType AVRO, no references.
    plain = {"schema": _text(KEY), "schemaType": "AVRO", "references": []}
    assert client.post("/subjects/s/versions", json=plain, headers=HEADERS).json() == {"id": 1}


def test_soft_then_permanent_delete_keeps_the_ids_served(client: TestClient) -> None:
    _register(client, "s", KEY)
    _register(client, "s", CUSTOMER)
    assert _error(client.delete("/subjects/s", params={"permanent": "true"})) == (404, 40405)
    assert client.delete("/subjects/s").json() == [1, 2]
    assert client.get("/subjects").json() == []
    assert client.get("/subjects", params={"deleted": "true"}).json() == ["s"]
    assert _error(client.get("/subjects/s/versions")) == (404, 40401)
    assert client.get("/subjects/s/versions", params={"deleted": "true"}).json() == [1, 2]
    assert _error(client.delete("/subjects/s")) == (404, 40404)
    assert client.get("/schemas/ids/2").status_code == 200  # data written with it stays readable
    assert client.delete("/subjects/s", params={"permanent": "True"}).json() == [1, 2]
    assert _error(client.delete("/subjects/s")) == (404, 40401)
    assert client.get("/schemas/ids/2").status_code == 200
    # Registered again: the same id, never a new one for the same schema.
    assert _register(client, "s", CUSTOMER).json() == {"id": 2}


def test_a_version_is_deleted_alone(client: TestClient) -> None:
    _register(client, "s", KEY)
    _register(client, "s", CUSTOMER)
    assert client.delete("/subjects/s/versions/latest").json() == 2
    assert client.get("/subjects/s/versions/latest").json()["version"] == 1
    assert _error(client.delete("/subjects/s/versions/2")) == (404, 40406)
    assert client.delete("/subjects/s/versions/2", params={"permanent": "true"}).json() == 2
    assert client.get("/subjects/s/versions", params={"deleted": "true"}).json() == [1]
    assert _error(client.delete("/subjects/s/versions/1", params={"permanent": "true"})) == (
        404,
        40407,
    )


# --- compatibility configuration -----------------------------------------------------------------


def test_compatibility_is_answered_and_set_globally_and_per_subject(client: TestClient) -> None:
    assert client.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    put = client.put("/config", json={"compatibility": "full"}, headers=HEADERS)
    assert put.json() == {"compatibility": "FULL"}
    assert client.get("/config").json() == {"compatibilityLevel": "FULL"}
    assert _error(client.get("/config/s")) == (404, 40408)
    assert client.get("/config/s", params={"defaultToGlobal": "true"}).json() == {
        "compatibilityLevel": "FULL"
    }
    client.put("/config/s", json={"compatibility": "NONE"}, headers=HEADERS)
    assert client.get("/config/s").json() == {"compatibilityLevel": "NONE"}
    assert client.delete("/config/s").json() == {"compatibilityLevel": "NONE"}
    assert _error(client.delete("/config/s")) == (404, 40401)
    bad = client.put("/config", json={"compatibility": "SOMETIMES"}, headers=HEADERS)
    assert _error(bad) == (422, 42203)


# --- HTTP strictness -----------------------------------------------------------------------------


def test_content_types_are_confluents(client: TestClient) -> None:
    body = json.dumps({"schema": _text(KEY)})
    as_text = client.post(
        "/subjects/s/versions", content=body, headers={"Content-Type": "text/plain"}
    )
    assert _error(as_text) == (415, 415)
    as_json = client.post(
        "/subjects/s/versions",
        content=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    assert as_json.json() == {"id": 1}
    assert as_json.headers["content-type"] == "application/json"
    assert _error(client.get("/subjects", headers={"Accept": "text/html"})) == (406, 406)
    assert client.get("/subjects", headers={"Accept": "*/*"}).status_code == 200


def test_malformed_bodies_and_unknown_fields_are_400(client: TestClient) -> None:
    broken = client.post("/subjects/s/versions", content=b"{", headers=HEADERS)
    assert _error(broken) == (400, 400)
    listed = client.post("/subjects/s/versions", json=[_text(KEY)], headers=HEADERS)
    assert _error(listed) == (400, 400)
    extra = {"schema": _text(KEY), "colour": "blue"}
    assert _error(client.post("/subjects/s/versions", json=extra, headers=HEADERS)) == (400, 400)
    lenient = {**HEADERS, "Confluent-Accept-Unknown-Properties": "true"}
    assert client.post("/subjects/s/versions", json=extra, headers=lenient).json() == {"id": 1}


def test_unknown_paths_and_methods_answer_in_confluents_shape(client: TestClient) -> None:
    assert client.get("/nowhere").json() == {"error_code": 404, "message": "HTTP 404 Not Found"}
    assert client.get("/schemas/ids/abc").status_code == 404
    assert client.put("/subjects").json() == {
        "error_code": 405,
        "message": "HTTP 405 Method Not Allowed",
    }


def test_admin_counts_requests_by_route(client: TestClient) -> None:
    _register(client, "s", KEY)
    _register(client, "s", KEY)
    client.get("/schemas/ids/1")
    counts = client.get("/_admin/requests").json()
    assert counts["by_route"] == {
        "POST /subjects/{subject}/versions": 2,
        "GET /schemas/ids/{id}": 1,
    }
    assert counts["total"] == 3


# --- persistence -------------------------------------------------------------------------------


def test_a_restarted_registry_serves_the_same_ids_and_continues_after_them(
    tmp_path: Path,
) -> None:
    state = tmp_path / "schemas.json"
    with TestClient(build_app(state)) as before:
        _register(before, "s", KEY)
        _register(before, "t", CUSTOMER)
        before.delete("/subjects/t")
        before.put("/config", json={"compatibility": "NONE"}, headers=HEADERS)
    with TestClient(build_app(state)) as after:
        assert after.get("/schemas/ids/2").json()["schema"] == json.dumps(
            CUSTOMER, separators=(",", ":")
        )
        assert after.get("/subjects").json() == ["s"]
        assert after.get("/config").json() == {"compatibilityLevel": "NONE"}
        assert _register(after, "s", KEY).json() == {"id": 1}
        new = {"type": "record", "name": "Other", "fields": []}
        assert _register(after, "s", new).json() == {"id": 3}


def test_without_a_file_the_schemas_are_in_memory_only() -> None:
    store = SchemaStore()
    assert store.register("s", _text(KEY)) == 1
    assert SchemaStore().max_id() == 0


def test_a_state_file_that_is_not_the_registrys_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "schemas.json"
    state.write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="not a schema registry state file"):
        SchemaStore(state)


def test_subjects_with_control_characters_are_invalid() -> None:
    with pytest.raises(RegistryError) as refused:
        SchemaStore().register("bad\nsubject", _text(KEY))
    assert refused.value.error_code == 42208
