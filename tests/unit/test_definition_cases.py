"""Case files of ``reach-sync test`` (consumer/definition_tests/): how they are read, how a step
is held to its expectations, and the JUnit XML CI systems read."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import pytest

from consumer.config import SyncDefinition
from consumer.definition_tests.cases import load_cases, load_suite
from consumer.definition_tests.junit import CaseResult, write_junit
from consumer.definition_tests.observed import Observed
from consumer.definition_tests.verdict import differences, same
from consumer.errors import ConfigurationError, DefinitionError
from tests.shop_definition import shop_definition

CASE = """\
name: a customer
sql: INSERT INTO customers VALUES (1)
expect:
  customers:
    1: {fields: {lifetimeValue: 0.30, email: a@example.com}, groups: [vip]}
"""


def _write(directory: Path, **files: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def definition() -> SyncDefinition:
    return shop_definition()


def test_a_single_step_case_is_one_step_with_ids_as_text_and_exact_decimals(
    tmp_path: Path,
) -> None:
    (case,) = load_cases(_write(tmp_path, **{"one.yaml": CASE}))
    (step,) = case.steps
    expectation = step.expect["customers"]["1"]
    assert expectation.fields == {"lifetimeValue": Decimal("0.30"), "email": "a@example.com"}
    assert case.name == "a customer"


def test_a_wrong_case_file_is_named_with_its_line(tmp_path: Path) -> None:
    bad = CASE.replace("groups: [vip]", "groups: [vip], outcome: deleted")
    with pytest.raises(ConfigurationError) as raised:
        load_cases(_write(tmp_path, **{"one.yaml": bad, "two.yaml": "steps: []\n"}))
    message = str(raised.value)
    assert f"{tmp_path / 'one.yaml'}:5: expect.customers.1:" in message
    assert "describe a send, not deleted" in message
    assert f"{tmp_path / 'two.yaml'}:1: steps:" in message


def test_a_suite_naming_a_missing_schema_file_is_refused_at_its_line(tmp_path: Path) -> None:
    _write(tmp_path, **{"suite.yaml": "# the shop\nschema: [db.sql, missing.sql]\n", "db.sql": ""})
    with pytest.raises(DefinitionError) as raised:
        load_suite(tmp_path)
    assert f"{tmp_path / 'suite.yaml'}:2: schema[1]: no file" in str(raised.value)


def test_json_equality_tells_booleans_numbers_and_text_apart() -> None:
    assert same({"a": Decimal("0.30")}, {"a": Decimal("0.3")})
    assert same([1, 2.5], [Decimal("1"), Decimal("2.50")])
    assert not same(True, 1)
    assert not same("1", 1)
    assert not same({"a": 1}, {"a": 1, "b": None})


def test_a_differing_field_group_or_outcome_is_each_named(
    tmp_path: Path, definition: SyncDefinition
) -> None:
    (case,) = load_cases(_write(tmp_path, **{"one.yaml": CASE}))
    record = {"email": "b@example.com", "lifetimeValue": Decimal("0.3"), "segments": []}
    found = differences(
        definition,
        case.steps[0],
        {"customers": {"1": Observed("sent", record), "2": Observed("deleted")}},
    )
    text = "\n".join(found)
    assert "customers 1:" in text
    assert '-  "email": "a@example.com"' in text
    assert '+  "email": "b@example.com"' in text
    assert "groups: expected ['vip'], got []" in text
    assert "customers 2: deleted, not expected" in text
    assert "lifetimeValue" not in text  # 0.30 is what was sent


def test_a_step_that_matches_has_no_differences(tmp_path: Path, definition: SyncDefinition) -> None:
    (case,) = load_cases(_write(tmp_path, **{"one.yaml": CASE}))
    record = {"email": "a@example.com", "lifetimeValue": Decimal("0.30"), "segments": ["vip"]}
    observed = {"customers": {"1": Observed("sent", record), "3": Observed("skipped")}}
    assert differences(definition, case.steps[0], observed) == []


def test_junit_xml_counts_failures_and_errors_and_carries_the_diff(tmp_path: Path) -> None:
    path = tmp_path / "out" / "junit.xml"
    write_junit(
        path,
        "shop",
        [
            CaseResult("passes", "a.yaml", 0.5),
            CaseResult("fails", "b.yaml", 0.25, failures=["customers 1:", "  expected sent"]),
            CaseResult("breaks", "c.yaml", 0.1, error="the schema does not load"),
        ],
    )
    root = ET.parse(path).getroot()  # noqa: S314  # our own file
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    failure = root.find("testcase[@name='fails']/failure")
    assert failure is not None and "expected sent" in (failure.text or "")
    assert root.find("testcase[@name='passes']/failure") is None


def test_a_definition_loads_for_a_test_without_the_production_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from consumer.definition_tests.target import Endpoints, aimed, load_for_test

    for name in [n for n in os.environ if n.startswith("REACH_SYNC_")]:
        monkeypatch.delenv(name)
    definition = load_for_test(Path(__file__).parents[2] / "examples" / "shop.yaml")
    assert definition.source.kafka.group_id == "reach-sync-shop"  # ${VAR:-default} kept
    endpoints = Endpoints(
        database_dsn="postgresql://case@127.0.0.1:5/case_1",
        redis_url="redis://127.0.0.1:6/0",
        reach_url="http://127.0.0.1:7",
        partner_id="sandbox-partner",
        partner_secret="a-secret-of-the-sandbox-long-enough",
        key_prefix="reach-sync-test:case-1",
    )
    pointed = aimed(definition, endpoints)
    assert pointed.source.database.dsn.get_secret_value() == endpoints.database_dsn
    assert pointed.destination.base_url == "http://127.0.0.1:7"
    assert pointed.destination.auth.partner_id == "sandbox-partner"
    assert pointed.redis.key_prefix == "reach-sync-test:case-1"
    assert pointed.resources == definition.resources
