"""db-access's names and SQL text without a database (consumer/access/): view names, the
placeholders a view fills as psycopg would, the whitespace a PII hash strips, and command-line
refusals (exit 2, naming the option)."""

from __future__ import annotations

import argparse
import sys

import pytest

from consumer.access.formats import PYTHON_WHITESPACE
from consumer.access.views import bind, check_name, slug, view_name
from consumer.cli.access import add_access_commands
from consumer.errors import ConfigurationError
from tests.shop_definition import EXAMPLE


def test_a_view_is_named_by_resource_and_tenant_in_lower_case_letters_digits_and_underscores() -> (
    None
):
    assert view_name("customers", "merchant-1") == "customers__merchant_1"
    assert view_name("shop-orders", "Globex Corp.") == "shop_orders__globex_corp_"
    assert slug("Zoë & Co") == "zo_co"


def test_tenants_that_differ_only_in_case_or_punctuation_give_one_slug() -> None:
    # plan_access refuses them (naming both) rather than name a view after the other tenants.
    assert slug("Merchant-1") == slug("merchant_1")


def test_binding_fills_the_named_placeholders_with_sql_and_unescapes_percent() -> None:
    query = "SELECT id FROM t WHERE id = ANY(%(ids)s) AND name LIKE 'a%%'"
    assert bind(query, {"ids": "ARRAY(SELECT 1)"}, "q") == (
        "SELECT id FROM t WHERE id = ANY(ARRAY(SELECT 1)) AND name LIKE 'a%'"
    )


def test_filled_sql_is_not_read_again_for_placeholders() -> None:
    assert bind("%(ids)s", {"ids": "'100%'"}, "q") == "'100%'"


@pytest.mark.parametrize("text", ["x = %(other)s", "x = %s", "x LIKE 'a%'"])
def test_a_placeholder_a_view_cannot_fill_is_a_configuration_error_naming_it(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"resources\.r\.query: .%.* no placeholder"):
        bind(text, {"ids": "NULL"}, "resources.r.query")


def test_the_hash_strips_the_same_whitespace_as_python() -> None:
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    assert every == PYTHON_WHITESPACE


@pytest.mark.parametrize(
    ("kind", "name"),
    [("schema", "public"), ("schema", "pg_views"), ("role", "Reader"), ("role", "x" * 64)],
)
def test_a_schema_or_role_name_that_needs_quoting_or_is_not_its_own_is_refused(
    kind: str, name: str
) -> None:
    with pytest.raises(ValueError, match=kind):
        check_name(kind, name)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--schema", "public"], "--schema"),
        (["--role", "Reach-Reader"], "--role"),
        (["--connection-limit", "0"], "--connection-limit"),
    ],
)
def test_a_bad_option_is_a_usage_error_naming_it(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="reach-sync")
    add_access_commands(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["db-access", "apply", "--config", str(EXAMPLE), *argv])
    assert exited.value.code == 2
    assert named in capsys.readouterr().err
