"""What a backfill covers (consumer/backfill/scope.py): the same command line finds the same
checkpoint, any other one a different checkpoint; names the definition lacks are refused."""

from __future__ import annotations

import pytest

from consumer.backfill.scope import BackfillScope
from consumer.config import Backfill, SyncDefinition
from consumer.errors import ConfigurationError
from tests.shop_definition import shop_definition


def _with_since_column(definition: SyncDefinition, *names: str) -> SyncDefinition:
    resources = {
        name: resource.model_copy(update={"backfill": Backfill(since_column="created_at")})
        if name in names
        else resource
        for name, resource in definition.resources.items()
    }
    return definition.model_copy(update={"resources": resources})


DEFINITION = _with_since_column(shop_definition(), "customers", "transactions")
BASE: dict[str, object] = {
    "kind": "backfill",
    "resources": ("customers",),
    "tenants": ("merchant-1",),
    "where": "q.marketing_opt_in",
    "since_ms": 1_700_000_000_000,
    "fingerprints": (),
}


def _scope(**changes: object) -> BackfillScope:
    arguments = {**BASE, **changes}
    return BackfillScope.of(DEFINITION, **arguments)  # type: ignore[arg-type]


def test_the_same_command_line_finds_the_same_checkpoint() -> None:
    first, second = _scope(), _scope()
    assert first.id == second.id
    assert len(first.id) == 16 and int(first.id, 16) >= 0


def test_tenant_order_and_repeats_do_not_change_the_checkpoint() -> None:
    assert _scope(tenants=("b", "a", "b")).id == _scope(tenants=("a", "b")).id


def test_resources_are_taken_in_definition_order_whatever_the_command_line_order() -> None:
    reversed_order = _scope(resources=("transactions", "customers"))
    assert reversed_order.resources == ("customers", "transactions")
    assert reversed_order.id == _scope(resources=("customers", "transactions")).id


def test_no_resource_named_means_every_resource_of_the_definition() -> None:
    everything = _scope(resources=())
    assert everything.resources == ("customers", "transactions")
    assert everything.id == _scope(resources=("customers", "transactions")).id


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "resync"},
        {"resources": ("transactions",)},
        {"resources": ("customers", "transactions")},
        {"tenants": ()},
        {"tenants": ("merchant-2",)},
        {"tenants": ("merchant-1", "merchant-2")},
        {"where": None},
        {"where": "NOT q.marketing_opt_in"},
        {"since_ms": None},
        {"since_ms": 1_700_000_000_001},
        {"fingerprints": (("customers", "0123456789abcdef"),)},
    ],
    ids=lambda change: ",".join(f"{k}={v!r}" for k, v in change.items()),
)
def test_any_other_input_is_another_checkpoint(change: dict[str, object]) -> None:
    assert _scope(**change).id != _scope().id


def test_another_fingerprint_is_another_checkpoint() -> None:
    one = _scope(kind="resync", fingerprints=(("customers", "aaaa"),))
    other = _scope(kind="resync", fingerprints=(("customers", "bbbb"),))
    assert one.id != other.id


def test_an_unknown_resource_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        _scope(resources=("customers", "invoices"))
    message = str(caught.value)
    assert "invoices" in message
    # and says what there is instead
    assert "customers" in message and "transactions" in message


def test_since_on_a_resource_without_since_column_is_a_configuration_error_naming_it() -> None:
    definition = _with_since_column(shop_definition(), "customers")
    with pytest.raises(ConfigurationError) as caught:
        BackfillScope.of(definition, "backfill", since_ms=1_700_000_000_000)
    message = str(caught.value)
    assert "--since" in message and "since_column" in message
    assert "transactions" in message and "customers" not in message


def test_since_on_resources_that_all_have_a_since_column_is_accepted() -> None:
    definition = _with_since_column(shop_definition(), "customers")
    scope = BackfillScope.of(definition, "backfill", ("customers",), since_ms=1)
    assert scope.since_ms == 1 and scope.filtered


def test_an_empty_where_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="--where"):
        _scope(where="   ")


def test_only_tenants_where_or_since_make_a_filtered_walk() -> None:
    assert not _scope(tenants=(), where=None, since_ms=None).filtered
    assert _scope(tenants=(), where=None).filtered
    assert _scope(tenants=(), since_ms=None).filtered
    assert _scope(where=None, since_ms=None).filtered


def test_the_description_names_what_the_scope_covers() -> None:
    described = _scope().describe()
    for part in ("backfill of customers", "merchant-1", "q.marketing_opt_in", "1700000000000"):
        assert part in described
