"""The definition checked against Reach's schema definitions (consumer/reach_check.py), rule by
rule without a server: the sample shop against its own Reach schemas
(devstack/reach_devstack/shop_reach_schemas.yaml), each edited to show one mistake. How
``check_reach`` reads the schemas and classifies Reach's answers goes through the client's
transport seam; the CLI's wiring through patched checks. Against the real sandbox:
tests/integration/test_reach_check.py.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import SecretStr

from consumer.cli import commands
from consumer.cli.main import main
from consumer.config import Auth, FieldMapping, Resource, SyncDefinition
from consumer.config_file import load_definition, located
from consumer.errors import ConfigurationError, DefinitionError, Retryable
from consumer.reach.client import ReachClient
from consumer.reach.schemas import SchemaDefinition
from consumer.reach_check import check_reach, reach_problems
from consumer.service import ServiceStats
from tests.shop_definition import EXAMPLE, OFFLINE_ENV, shop_definition

# A secret of HS256's length (OFFLINE_ENV's is shorter; PyJWT, which checks tokens, warns of it).
ENV = {**OFFLINE_ENV, "REACH_SYNC_JWT_SECRET": "unit-test-partner-secret-0123456789-abcdef"}
SHOP_SCHEMAS = Path(__file__).parents[2] / "devstack" / "reach_devstack" / "shop_reach_schemas.yaml"


def shop_schemas() -> list[dict[str, Any]]:
    """The shop's Reach schemas as Reach lists them (§3.8), to edit."""
    entries: list[dict[str, Any]] = yaml.safe_load(SHOP_SCHEMAS.read_text())
    return [
        {
            "id": f"id-{entry['name']}",
            "name": entry["name"],
            "external_id_field": entry["external_id_field"],
            "externalIdField": entry["external_id_field"],
            "schema": entry["schema"],
        }
        for entry in entries
    ]


def parsed(entries: list[dict[str, Any]]) -> list[SchemaDefinition]:
    return [
        SchemaDefinition(e["name"], e["external_id_field"], e["schema"], e["id"]) for e in entries
    ]


def edited(name: str, edit: Callable[[dict[str, Any]], None]) -> list[SchemaDefinition]:
    """The shop's schemas with ``edit`` applied to the JSON Schema of ``name``."""
    entries = copy.deepcopy(shop_schemas())
    edit(next(e for e in entries if e["name"] == name)["schema"])
    return parsed(entries)


def with_property(name: str, field: str, prop: Any) -> list[SchemaDefinition]:
    return edited(name, lambda schema: schema["properties"].__setitem__(field, prop))


def with_mapping(definition: SyncDefinition, resource: str, **fields: FieldMapping | None) -> Any:
    """``definition`` with fields of ``resource``'s mapping replaced (None: removed). Built
    without validation, so a format the model may not have yet (``decimal``) can be tried."""
    found = definition.resources[resource]
    mapping = {k: v for k, v in {**found.mapping, **fields}.items() if v is not None}
    changed = found.model_copy(update={"mapping": mapping})
    return definition.model_copy(update={"resources": {**definition.resources, resource: changed}})


def field(column: str, format: str = "raw", pii: str = "none") -> FieldMapping:
    return FieldMapping.model_construct(column=column, format=format, pii=pii)


def without_resource(definition: SyncDefinition, name: str) -> SyncDefinition:
    resources = {k: v for k, v in definition.resources.items() if k != name}
    return definition.model_copy(update={"resources": resources})


def renamed(definition: SyncDefinition, resource: str, reach_schema: str) -> SyncDefinition:
    changed: Resource = definition.resources[resource].model_copy(
        update={"reach_schema": reach_schema}
    )
    return definition.model_copy(update={"resources": {**definition.resources, resource: changed}})


# --- a sound definition --------------------------------------------------------------------------


def test_the_shop_definition_fits_the_shops_reach_schemas() -> None:
    assert reach_problems(shop_definition(), parsed(shop_schemas())) == []


def test_schema_names_match_whatever_their_case() -> None:
    definition = renamed(shop_definition(), "customers", "SHOP_Customers")
    assert reach_problems(definition, parsed(shop_schemas())) == []


# --- the schema ----------------------------------------------------------------------------------


def test_a_schema_reach_does_not_have_is_named_with_those_it_has() -> None:
    definition = renamed(shop_definition(), "customers", "shop_customerz")
    problems = reach_problems(definition, parsed(shop_schemas()))
    assert problems == [
        "resources.customers.reach_schema: Reach has no schema shop_customerz (did you mean "
        "shop_customers?) (it has shop_customers, shop_transactions)"
    ]


def test_a_partner_with_no_schemas_is_told_to_create_them() -> None:
    problems = reach_problems(shop_definition(), [])
    assert [p.split(": ", 1)[0] for p in problems] == [
        "resources.customers.reach_schema",
        "resources.transactions.reach_schema",
    ]
    assert "it has none" in problems[0]


# --- required properties -------------------------------------------------------------------------


def test_a_required_property_not_mapped_is_named_at_the_mapping() -> None:
    definition = with_mapping(shop_definition(), "transactions", transactionTotal=None)
    problems = reach_problems(definition, parsed(shop_schemas()))
    assert problems == [
        "resources.transactions.mapping: Reach schema shop_transactions requires "
        "transactionTotal, which is not mapped: Reach would refuse every record"
    ]


def test_the_external_id_field_is_required_even_when_the_schema_does_not_say_so() -> None:
    schemas = edited("shop_customers", lambda schema: schema.__setitem__("required", []))
    definition = with_mapping(shop_definition(), "customers", customerId=None)
    problems = reach_problems(definition, schemas)
    assert problems == [
        "resources.customers.mapping: Reach schema shop_customers requires customerId (its "
        "external id field), which is not mapped: Reach would refuse every record"
    ]


def test_the_groups_field_fills_a_required_property() -> None:
    schemas = edited("shop_customers", lambda schema: schema["required"].append("segments"))
    assert reach_problems(shop_definition(), schemas) == []


# --- fields the schema does not know -------------------------------------------------------------


def test_a_misspelt_field_of_a_closed_schema_is_named_as_refusing_every_record() -> None:
    definition = with_mapping(
        shop_definition(), "customers", email=None, emial=field("email", pii="send")
    )
    problems = reach_problems(definition, parsed(shop_schemas()))
    assert problems == [
        "resources.customers.mapping.emial: Reach schema shop_customers has no property emial "
        "(did you mean email?) and allows no other (additionalProperties: false): Reach would "
        "refuse every record"
    ]


def test_an_unknown_field_of_an_open_schema_is_named_as_a_likely_misspelling() -> None:
    schemas = edited("shop_customers", lambda schema: schema.pop("additionalProperties"))
    definition = with_mapping(shop_definition(), "customers", fistName=field("first_name"))
    problems = reach_problems(definition, schemas)
    assert problems == [
        "resources.customers.mapping.fistName: Reach schema shop_customers has no property "
        "fistName (did you mean firstName?): Reach keeps it as an undeclared field, which is "
        "probably a misspelling"
    ]


def test_a_schema_that_declares_no_properties_takes_any_field() -> None:
    schemas = edited("shop_customers", lambda schema: schema.clear())
    assert reach_problems(shop_definition(), schemas) == []


# --- formats against types -----------------------------------------------------------------------

# (format, the property, whether the format's JSON output can satisfy it)
FORMATS: list[tuple[str, Any, bool]] = [
    ("integer", {"type": "integer"}, True),
    ("integer", {"type": "number"}, True),
    ("integer", {"type": ["integer", "null"]}, True),
    ("integer", {"type": ["string", "null"]}, False),
    ("integer", {"type": "string"}, False),
    ("decimal_cents", {"type": "number", "minimum": 0}, True),
    ("decimal_cents", {"type": "integer"}, False),
    ("decimal", {"type": "number"}, True),
    ("decimal", {"type": "integer"}, False),
    ("decimal", {"type": "string"}, False),
    ("string", {"type": "string", "format": "email"}, True),
    ("string", {"type": "integer"}, False),
    ("boolean", {"type": "boolean"}, True),
    ("boolean", {"type": "string"}, False),
    ("datetime", {"type": "string"}, True),
    ("datetime", {"type": "string", "format": "date-time"}, True),
    ("datetime", {"type": "string", "format": "date"}, False),
    ("datetime", {"type": "string", "format": "email"}, False),
    ("datetime", {"type": "string", "format": "x-partner-stamp"}, True),
    ("date", {"type": "string", "format": "date"}, True),
    ("date", {"type": "string", "format": "date-time"}, False),
    ("date", {"type": "integer"}, False),
    ("raw", {"type": "integer"}, True),  # raw sends what the column holds: nothing to tell
    ("string", {"enum": ["EUR", "USD"]}, True),
    ("integer", {"enum": ["EUR", "USD"]}, False),
    ("integer", {"enum": [1.5, 2.5]}, False),
    ("decimal_cents", {"enum": [1, 2]}, True),
    ("integer", {"const": 3}, True),
    ("boolean", {"const": "yes"}, False),
    ("string", {"$ref": "reach:schemas/shop_customers"}, True),
    ("integer", {"$ref": "reach:schemas/shop_customers"}, False),
    ("datetime", {"anyOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]}, True),
    ("integer", {"oneOf": [{"type": "string"}, {"type": "boolean"}]}, False),
    ("integer", {"allOf": [{"type": "number"}, {"type": "integer"}]}, True),
    ("decimal_cents", {"allOf": [{"type": "number"}, {"type": "integer"}]}, False),
    ("integer", {}, True),
    ("integer", True, True),
]


@pytest.mark.parametrize(
    ("format", "prop", "fits"), FORMATS, ids=[f"{f}-{p}-{ok}" for f, p, ok in FORMATS]
)
def test_a_format_is_named_where_its_json_output_cannot_satisfy_the_propertys_type(
    format: str, prop: Any, fits: bool
) -> None:
    definition = with_mapping(shop_definition(), "transactions", currency=field("currency", format))
    problems = reach_problems(definition, with_property("shop_transactions", "currency", prop))
    if fits:
        assert problems == []
        return
    assert len(problems) == 1, problems
    where, reason = problems[0].split(": ", 1)
    assert where == "resources.transactions.mapping.currency.format"
    assert reason.startswith(f"format {format} sends ")
    shown = json.dumps(prop, separators=(", ", ": "))  # the property's type, as written
    assert reason.endswith(f"; shop_transactions.currency is {shown}, which does not accept that")


def test_a_hashed_field_is_a_hex_string_whatever_its_format() -> None:
    hashed = field("currency", "integer", pii="hash")
    definition = with_mapping(shop_definition(), "transactions", currency=hashed)
    fits = with_property("shop_transactions", "currency", {"type": "string"})
    assert reach_problems(definition, fits) == []
    for prop in ({"type": "integer"}, {"type": "string", "format": "date-time"}):
        problems = reach_problems(definition, with_property("shop_transactions", "currency", prop))
        assert len(problems) == 1, problems
        assert problems[0].startswith(
            "resources.transactions.mapping.currency.pii: pii: hash sends a hex SHA-256 string; "
        )


# --- the groups field ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prop",
    [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}, {"type": "object"}],
)
def test_a_groups_field_that_takes_no_array_of_strings_is_named(prop: Any) -> None:
    problems = reach_problems(shop_definition(), with_property("shop_customers", "segments", prop))
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        "resources.customers.groups.field: the groups are sent as an array of group names "
        "(strings); shop_customers.segments is {"
    )


def test_a_groups_field_the_schema_does_not_have_is_named() -> None:
    schemas = edited("shop_customers", lambda schema: schema["properties"].pop("segments"))
    problems = reach_problems(shop_definition(), schemas)
    assert problems == [
        "resources.customers.groups.field: Reach schema shop_customers has no property segments "
        "and allows no other (additionalProperties: false): Reach would refuse every record"
    ]


# --- $ref links ----------------------------------------------------------------------------------

REF = {"$ref": "reach:schemas/SHOP_customers"}


def test_a_reference_to_a_schema_this_definition_sends_is_sound() -> None:
    schemas = with_property("shop_transactions", "customerId", REF)
    assert reach_problems(shop_definition(), schemas) == []


def test_a_reference_by_schema_id_is_followed() -> None:
    schemas = with_property("shop_transactions", "customerId", {"$ref": "reach:schemas/id-x"})
    assert "a schema Reach does not have" in reach_problems(shop_definition(), schemas)[0]
    by_id = with_property(
        "shop_transactions", "customerId", {"$ref": "reach:schemas/id-shop_customers"}
    )
    assert reach_problems(shop_definition(), by_id) == []


def test_a_reference_to_a_schema_nothing_sends_is_named_as_parked() -> None:
    definition = without_resource(shop_definition(), "customers")
    problems = reach_problems(definition, with_property("shop_transactions", "customerId", REF))
    assert problems == [
        "resources.transactions.mapping.customerId: shop_transactions.customerId refers to "
        "reach:schemas/SHOP_customers, which no resource of this definition sends: Reach parks "
        "records whose reference target was never sent (destination.dependency_wait_timeout_s), "
        "then drops them; send shop_customers too, or map this field to a plain string property"
    ]


def test_a_reference_to_a_schema_reach_does_not_have_is_named() -> None:
    schemas = with_property("shop_transactions", "customerId", {"$ref": "reach:schemas/buyers"})
    problems = reach_problems(shop_definition(), schemas)
    assert problems == [
        "resources.transactions.mapping.customerId: shop_transactions.customerId refers to "
        "reach:schemas/buyers, a schema Reach does not have: Reach would refuse or park every "
        "record"
    ]


def test_every_problem_of_every_resource_is_named_at_once() -> None:
    definition = with_mapping(
        shop_definition(),
        "customers",
        customerId=None,
        completedOrders=field("completed_orders", "decimal_cents"),
    )
    definition = renamed(definition, "transactions", "sales")
    problems = reach_problems(definition, parsed(shop_schemas()))
    assert [p.split(": ", 1)[0] for p in problems] == [
        "resources.customers.mapping",
        "resources.customers.mapping.completedOrders.format",
        "resources.transactions.reach_schema",
    ]


# --- reading the schemas from Reach --------------------------------------------------------------


class FakeReach:
    """Answers ``GET /partner/schema-definitions`` with ``entries``, or with ``answer``."""

    def __init__(
        self,
        entries: list[dict[str, Any]] | None = None,
        answer: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.entries = shop_schemas() if entries is None else entries
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answer is not None:
            return self.answer(request)
        return httpx.Response(200, json={"success": True, "message": "OK", "data": self.entries})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


@pytest.fixture
def shop_file(tmp_path: Path) -> Callable[..., tuple[Path, SyncDefinition]]:
    """examples/shop.yaml with textual edits, written and loaded (placeholder environment)."""

    def write(*edits: tuple[str, str]) -> tuple[Path, SyncDefinition]:
        text = EXAMPLE.read_text()
        for old, new in edits:
            assert old in text, old
            text = text.replace(old, new, 1)
        path = tmp_path / "shop.yaml"
        path.write_text(text)
        return path, load_definition(path, ENV)

    return write


def test_the_check_reads_the_schemas_as_the_partner(
    shop_file: Callable[..., tuple[Path, SyncDefinition]],
) -> None:
    path, definition = shop_file()
    reach = FakeReach()
    check_reach(definition, path, transport=reach.transport())
    [request] = reach.requests
    assert (request.method, request.url.path) == ("GET", "/partner/schema-definitions")
    assert request.headers["authorization"].startswith("Bearer ey")  # the partner JWT
    assert "reach-tenant-id" not in request.headers  # /partner/* takes none (§2.1)


def test_the_checks_problems_are_placed_at_their_lines_of_the_file(
    shop_file: Callable[..., tuple[Path, SyncDefinition]],
) -> None:
    path, definition = shop_file(("      email: {column: email", "      emial: {column: email"))
    with pytest.raises(DefinitionError) as raised:
        check_reach(definition, path, transport=FakeReach().transport())
    line = path.read_text().splitlines().index("      emial: {column: email, pii: send}") + 1
    assert str(raised.value).startswith(f"{path}:{line}: resources.customers.mapping.emial: ")


def test_the_external_id_field_is_read_from_either_key_case(
    shop_file: Callable[..., tuple[Path, SyncDefinition]],
) -> None:
    path, definition = shop_file()
    camel = [{k: v for k, v in e.items() if k != "external_id_field"} for e in shop_schemas()]
    for entry in camel:
        entry["schema"] = {**entry["schema"], "required": []}  # only the external id field left
    check_reach(definition, path, transport=FakeReach(camel).transport())
    without = with_mapping(definition, "customers", customerId=None)
    with pytest.raises(DefinitionError, match=r"requires customerId \(its external id field\)"):
        check_reach(without, path, transport=FakeReach(camel).transport())


def answering(status: int, body: Any = None) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=body or {"message": f"status {status}"})


def _cut(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (answering(503), Retryable),
        (answering(429), Retryable),
        (_cut, Retryable),
        (answering(401), ConfigurationError),
        (answering(403), ConfigurationError),
        (answering(404), ConfigurationError),
        (answering(400), ConfigurationError),
        (answering(200, {"success": True, "data": {"not": "a list"}}), ConfigurationError),
    ],
    ids=["503", "429", "unreachable", "401", "403", "404", "400", "no data list"],
)
def test_a_reach_that_cannot_answer_is_retryable_and_one_that_refuses_is_a_configuration_error(
    shop_file: Callable[..., tuple[Path, SyncDefinition]],
    answer: Callable[[httpx.Request], httpx.Response],
    error: type[Exception],
) -> None:
    path, definition = shop_file()
    with pytest.raises(error) as raised:
        check_reach(definition, path, transport=FakeReach(answer=answer).transport())
    assert not isinstance(raised.value, DefinitionError)
    assert "/partner/schema-definitions" in str(raised.value)


async def test_a_static_key_refused_on_the_partner_route_is_said_so() -> None:
    auth = Auth(mode="static", secret=SecretStr("rk_unit_static_key_0123456789"))
    destination = shop_definition(**ENV).destination.model_copy(update={"auth": auth})
    reach = FakeReach(answer=answering(401))
    async with ReachClient(destination, transport=reach.transport()) as client:
        with pytest.raises(
            ConfigurationError, match=r"destination\.auth\.mode is static"
        ) as raised:
            await client.schema_definitions()
    assert raised.value.status == 401
    assert "rk_unit_static_key" not in str(raised.value)
    assert reach.requests[0].headers["authorization"] == "Bearer rk_unit_static_key_0123456789"


async def test_inactive_and_nameless_definitions_are_left_out() -> None:
    entries: list[dict[str, Any]] = [
        *shop_schemas(),
        {"name": "old", "deactivated_at": "2024-01-01T00:00:00Z", "schema": {}},
        {"schema": {}},
        "not an object",
    ]
    async with ReachClient(
        shop_definition(**ENV).destination, transport=FakeReach(entries).transport()
    ) as client:
        found = await client.schema_definitions()
    assert [(s.name, s.external_id_field, s.id) for s in found] == [
        ("shop_customers", "customerId", "id-shop_customers"),
        ("shop_transactions", "transactionId", "id-shop_transactions"),
    ]
    assert found[0].schema["additionalProperties"] is False


# --- the commands --------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)


def _raises(where: str) -> Callable[..., None]:
    def check(definition: SyncDefinition, path: Path, **options: Any) -> None:
        raise located(path, [f"{where}: wrong"])

    return check


def test_validate_reach_says_so_when_the_definition_fits(
    offline: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checked: list[Path] = []
    monkeypatch.setattr(commands, "check_reach", lambda definition, path: checked.append(path))
    assert main(["validate", str(EXAMPLE), "--reach"]) == 0
    assert checked == [EXAMPLE]
    assert f"{EXAMPLE}: valid (and against Reach's schemas). " in capsys.readouterr().out
    monkeypatch.setattr(commands, "check_source", lambda definition, path, **options: None)
    assert main(["validate", str(EXAMPLE), "--source", "--reach"]) == 0
    assert "valid (and against the source database and Reach's schemas)" in (
        capsys.readouterr().out
    )


def test_validate_with_both_checks_names_the_problems_of_both_at_once(
    offline: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(commands, "check_source", _raises("resources.customers.key"))
    monkeypatch.setattr(commands, "check_reach", _raises("resources.transactions.reach_schema"))
    assert main(["validate", str(EXAMPLE), "--source", "--reach"]) == 2
    err = capsys.readouterr().err.splitlines()
    lines = EXAMPLE.read_text().splitlines()
    assert err == [
        f"{EXAMPLE}:{lines.index('    key: id') + 1}: resources.customers.key: wrong",
        f"{EXAMPLE}:{lines.index('    reach_schema: shop_transactions') + 1}: "
        "resources.transactions.reach_schema: wrong",
    ]


def test_validate_reach_fails_with_reachs_reason_when_it_cannot_read_the_schemas(
    offline: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(definition: SyncDefinition, path: Path) -> None:
        raise Retryable("Reach unavailable for the definition check: 503")

    monkeypatch.setattr(commands, "check_reach", unavailable)
    assert main(["validate", str(EXAMPLE), "--reach"]) == 1
    assert capsys.readouterr().err == (
        "validate: Reach unavailable for the definition check: 503\n"
    )


@pytest.fixture
def started(offline: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``run`` with a service that returns at once; the roles it was started with."""
    import consumer.service

    roles: list[str] = []

    def run_service(definition: object, stop: threading.Event, **kwargs: Any) -> ServiceStats:
        roles.append(kwargs["role"])
        stats: ServiceStats = kwargs["stats"]
        return stats

    monkeypatch.setattr(consumer.service, "run_service", run_service)
    monkeypatch.setattr(consumer.service, "install_stop_signals", lambda stop: None)
    monkeypatch.setattr(commands, "abandoned_consumers", lambda: 0)
    monkeypatch.setattr(commands, "check_source", lambda definition, path, **options: None)
    level = logging.getLogger().level
    try:
        yield roles
    finally:
        logging.getLogger().setLevel(level)


def test_run_refuses_to_start_on_a_problem_reach_shows(
    started: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(commands, "check_reach", _raises("resources.customers.mapping"))
    assert main(["run", str(EXAMPLE)]) == 2
    assert started == []
    assert ": resources.customers.mapping: wrong" in capsys.readouterr().err


def test_run_starts_anyway_when_reach_cannot_be_asked(
    started: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable(definition: SyncDefinition, path: Path) -> None:
        raise Retryable("Reach unavailable for the definition check: connection refused")

    monkeypatch.setattr(commands, "check_reach", unavailable)
    with caplog.at_level(logging.WARNING, logger="consumer.cli.commands"):
        assert main(["run", str(EXAMPLE)]) == 0
    assert started == ["all"]
    assert "not checked against Reach's schemas (Reach unavailable" in caplog.text


def test_a_router_alone_is_not_checked_against_reach(
    started: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "check_reach", _raises("resources.customers.mapping"))
    assert main(["run", str(EXAMPLE), "--role", "router"]) == 0
    assert started == ["router"]
    assert main(["run", str(EXAMPLE), "--role", "syncer"]) == 2
    assert started == ["router"]
