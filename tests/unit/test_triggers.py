"""Planning dirty entities from changes: which images are trusted for which id column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest

from consumer.cli.plan import Plan, describe_plan, plan_command
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import BadRecord
from consumer.router.debezium import Change, decode_event
from consumer.router.triggers import DirtyEntity, TriggerIndex, UnknownTable, UnusableId, plan_dirty
from tests.shop_definition import EXAMPLE
from tests.shop_definition import OFFLINE_ENV as ENV

FIXTURE = Path(__file__).parents[1] / "fixtures/debezium/postgres-json-with-schemas.jsonl"


def _shop(identity: Literal["default", "full"] = "full") -> SyncDefinition:
    """The shop example, with the customers' transactions trigger at the given replica identity."""
    definition = load_definition(EXAMPLE, ENV)
    customers = definition.resources["customers"]
    triggers = tuple(
        t.model_copy(update={"replica_identity": identity})
        if t.table == "public.transactions"
        else t
        for t in customers.triggers
    )
    resources = {
        **definition.resources,
        "customers": customers.model_copy(update={"triggers": triggers}),
    }
    return definition.model_copy(update={"resources": resources})


FULL = TriggerIndex.from_definition(_shop("full"))
DEFAULT = TriggerIndex.from_definition(_shop("default"))


def _tx(
    op: Literal["c", "u", "d", "r"],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    tx_id: int = 9,
) -> Change:
    return Change("public.transactions", op, {"id": tx_id}, before, after, 1, 2)


def _planned(change: Change, index: TriggerIndex) -> list[str]:
    return [str(d) for d in plan_dirty(change, index)]


def test_the_example_as_shipped_reads_transactions_before_images() -> None:
    shipped = load_definition(EXAMPLE, ENV)
    change = _tx("u", {"id": 9, "customer_id": 1}, {"id": 9, "customer_id": 2})
    assert _planned(change, TriggerIndex.from_definition(shipped)) == [
        "customers/2",
        "customers/1",
        "transactions/9",
    ]


@pytest.mark.parametrize("op", ["c", "r"])
def test_an_insert_or_snapshot_row_triggers_its_own_entity_and_its_foreign_key(op: Any) -> None:
    change = _tx(op, None, {"id": 9, "customer_id": 4})
    assert _planned(change, DEFAULT) == ["customers/4", "transactions/9"]
    assert _planned(change, FULL) == ["customers/4", "transactions/9"]


def test_a_moved_transaction_makes_both_customers_dirty_with_full_identity() -> None:
    change = _tx("u", {"id": 9, "customer_id": 1}, {"id": 9, "customer_id": 2})
    assert plan_dirty(change, FULL) == [
        DirtyEntity("customers", 2),
        DirtyEntity("customers", 1),
        DirtyEntity("transactions", 9),
    ]


def test_with_default_identity_a_before_image_is_never_read() -> None:
    # Even if one arrives (it should not on an update), it cannot be told from defaults.
    moved = _tx("u", {"id": 9, "customer_id": 1}, {"id": 9, "customer_id": 2})
    assert _planned(moved, DEFAULT) == ["customers/2", "transactions/9"]


def test_a_default_identity_delete_trusts_only_the_key() -> None:
    # What Debezium really sends for a DEFAULT-identity delete: customer_id is its default, 0.
    deleted = _tx("d", {"id": 9, "customer_id": 0, "amount_cents": 0}, None)
    assert _planned(deleted, DEFAULT) == ["transactions/9"]


def test_a_full_identity_delete_reads_the_old_foreign_key() -> None:
    deleted = _tx("d", {"id": 9, "customer_id": 3}, None)
    assert _planned(deleted, FULL) == ["customers/3", "transactions/9"]


def test_null_foreign_keys_are_skipped_and_duplicates_collapse() -> None:
    assert _planned(_tx("u", {"id": 9, "customer_id": None}, {"id": 9}), FULL) == ["transactions/9"]
    unchanged = _tx("u", {"id": 9, "customer_id": 5}, {"id": 9, "customer_id": 5})
    assert _planned(unchanged, FULL) == ["customers/5", "transactions/9"]


def test_a_key_column_comes_from_the_key_even_when_the_images_disagree() -> None:
    change = Change("public.customers", "d", {"id": 7}, {"id": 0, "email": ""}, None, None, None)
    assert _planned(change, DEFAULT) == ["customers/7"]


def test_string_ids_are_kept_as_strings() -> None:
    change = Change("public.customers", "c", {"id": "c-1"}, None, {"id": "c-1"}, None, None)
    assert plan_dirty(change, FULL) == [DirtyEntity("customers", "c-1")]


def test_an_unknown_table_is_a_bad_record_naming_it() -> None:
    change = Change("public.merchants", "u", {"id": 1}, None, {"id": 1}, None, None)
    with pytest.raises(UnknownTable, match=r"public\.merchants") as caught:
        plan_dirty(change, FULL)
    assert isinstance(caught.value, BadRecord)
    assert FULL.tables() == ["public.customers", "public.transactions"]


@pytest.mark.parametrize("value", [1.5, True, {"a": 1}, [1]])
def test_an_id_that_is_not_an_int_or_string_is_a_bad_record(value: Any) -> None:
    change = _tx("c", None, {"id": 9, "customer_id": value})
    with pytest.raises(UnusableId, match=r"customer_id of public\.transactions"):
        plan_dirty(change, FULL)


def _fixture_changes() -> list[Change]:
    changes = []
    for line in FIXTURE.read_text().splitlines():
        record = json.loads(line)
        key = None if record["key"] is None else orjson.dumps(record["key"])
        value = None if record["value"] is None else orjson.dumps(record["value"])
        event = decode_event(key, value)
        if isinstance(event, Change):
            changes.append(event)
    return changes


@pytest.mark.parametrize("index", [DEFAULT, FULL], ids=["default", "full"])
def test_the_shared_fixture_plans_the_same_under_either_identity(index: TriggerIndex) -> None:
    """The fixture's transaction delete carries a null customer_id (Debezium's default)."""
    planned = [(c.table, c.op, _planned(c, index)) for c in _fixture_changes()]
    assert planned == [
        ("public.customers", "c", ["customers/102"]),
        ("public.transactions", "c", ["customers/102", "transactions/302"]),
        ("public.transactions", "u", ["customers/102", "transactions/302"]),
        ("public.customers", "u", ["customers/102"]),
        ("public.customers", "u", ["customers/102"]),
        ("public.transactions", "u", ["customers/6", "transactions/5"]),
        ("public.transactions", "d", ["transactions/6"]),
        ("public.customers", "u", ["customers/7"]),
        ("public.customers", "c", ["customers/5000"]),
        ("public.customers", "d", ["customers/5000"]),
        ("public.customers", "c", ["customers/100000"]),
    ]


# --- reach-sync plan: the same planning from a row typed on the command line ----------------------


def test_plan_a_moved_transaction_from_the_command_line() -> None:
    entities = plan_command(
        _shop("full"),
        "public.transactions",
        {"id": 9, "customer_id": 2},
        op="u",
        before={"id": 9, "customer_id": 1},
    )
    assert describe_plan("public.transactions", "u", entities) == (
        "u on public.transactions: customers/2\n"
        "u on public.transactions: customers/1\n"
        "u on public.transactions: transactions/9"
    )


def test_plan_a_delete_reads_the_row_as_the_before_image() -> None:
    row = {"id": 9, "customer_id": 0}
    planned = plan_command(_shop("default"), "public.transactions", row, "d")
    assert [str(e) for e in planned.entities] == ["transactions/9"]
    row = {"id": 9, "customer_id": 3}
    planned = plan_command(_shop("full"), "public.transactions", row, "d")
    assert [str(e) for e in planned.entities] == ["customers/3", "transactions/9"]


def test_plan_says_when_nothing_is_dirty_and_refuses_what_it_cannot_plan() -> None:
    assert (
        describe_plan("public.customers", "u", Plan([]))
        == "u on public.customers: makes nothing dirty"
    )
    with pytest.raises(ValueError, match="op must be one of c, u, d, r, not 'x'"):
        plan_command(_shop(), "public.customers", {"id": 1}, op="x")
    with pytest.raises(ValueError, match="no key column id"):
        plan_command(_shop(), "public.customers", {"email": "a@example.com"})
    with pytest.raises(UnknownTable, match=r"public\.merchants"):
        plan_command(_shop(), "public.merchants", {"id": 1})
