"""Planning with lookup (fan-out) triggers: which values are lookup inputs, and what ``plan``
shows for them. The lookups themselves run on Postgres: tests/integration/test_lookups.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from consumer.cli.plan import describe_plan, plan_command
from consumer.config import DatabaseSource, Resource, SyncDefinition
from consumer.router.debezium import Change
from consumer.router.lookups import Found, LookupDatabase
from consumer.router.triggers import (
    DirtyEntity,
    LookupInput,
    TriggerIndex,
    UnusableId,
    plan_change,
    plan_dirty,
)
from tests.shop_definition import shop_definition

SUBSCRIPTIONS_OF_MEMBERS = "SELECT id FROM subscriptions WHERE member_id = ANY(%(ids)s::bigint[])"
MEMBERS_OF_SUBSCRIPTIONS = "SELECT member_id FROM subscriptions WHERE id = ANY(%(ids)s::bigint[])"


def _resource(table: str, triggers: list[dict[str, Any]]) -> Resource:
    return Resource.model_validate(
        {
            "reach_schema": table,
            "key": "id",
            "tenant": "tenant",
            "triggers": triggers,
            "query": f"SELECT id, tenant FROM {table} WHERE id = ANY(%(ids)s)",
            "mapping": {"id": {"column": "id"}},
            "delivery": {"mode": "batch"},
        }
    )


def _membership() -> SyncDefinition:
    """Members (with a two-hop lookup from invoices) and subscriptions (with a lookup from
    members, whose account is the subscriptions' tenant)."""
    members = _resource(
        "members",
        [
            {"table": "public.members", "id": "id"},
            {
                "table": "public.invoices",
                "id": "subscription_id",
                "replica_identity": "full",
                "lookup": MEMBERS_OF_SUBSCRIPTIONS,
            },
        ],
    )
    subscriptions = _resource(
        "subscriptions",
        [
            {"table": "public.subscriptions", "id": "id"},
            {"table": "public.members", "id": "id", "lookup": SUBSCRIPTIONS_OF_MEMBERS},
        ],
    )
    resources = {"members": members, "subscriptions": subscriptions}
    return shop_definition().model_copy(update={"resources": resources})


INDEX = TriggerIndex.from_definition(_membership())


def _change(
    table: str, op: Any, key: int, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> Change:
    return Change(f"public.{table}", op, {"id": key}, before, after, None, None)


def test_a_lookup_trigger_yields_inputs_beside_the_direct_entities() -> None:
    change = _change("members", "u", 5, None, {"id": 5, "account_id": 2})
    planned = plan_change(change, INDEX)
    assert planned.entities == [DirtyEntity("members", 5)]
    assert planned.lookups == [LookupInput("subscriptions", 1, "5")]
    # The router's other callers (dead-letter replay) see only the direct entities.
    assert plan_dirty(change, INDEX) == [DirtyEntity("members", 5)]


def test_a_moved_invoice_feeds_both_its_old_and_new_subscription_to_the_lookup() -> None:
    moved = _change("invoices", "u", 70, {"subscription_id": 11}, {"subscription_id": 12})
    planned = plan_change(moved, INDEX)
    assert planned.entities == []
    assert planned.lookups == [LookupInput("members", 1, "12"), LookupInput("members", 1, "11")]
    deleted = _change("invoices", "d", 70, {"id": 70, "subscription_id": 11}, None)
    assert plan_change(deleted, INDEX).lookups == [LookupInput("members", 1, "11")]


def test_null_and_repeated_lookup_inputs_ask_nothing_more() -> None:
    change = _change("invoices", "u", 70, {"subscription_id": None}, {"subscription_id": None})
    assert plan_change(change, INDEX).lookups == []
    same = _change("invoices", "u", 70, {"subscription_id": 3}, {"subscription_id": 3})
    assert plan_change(same, INDEX).lookups == [LookupInput("members", 1, "3")]


def test_a_lookup_input_must_be_an_id_like_any_other() -> None:
    change = _change("invoices", "c", 70, None, {"subscription_id": 1.5})
    with pytest.raises(UnusableId, match=r"subscription_id of public\.invoices"):
        plan_change(change, INDEX)


class _FakeLookups(LookupDatabase):
    """Answers lookups from a table instead of a database, and records what it was asked."""

    def __init__(self, answers: dict[str, list[int]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, list[str]]] = []
        self.closed = False

    def look_up(self, resource: str, position: int, lookup: str, ids: Sequence[str]) -> list[Found]:
        self.asked.append((lookup, list(ids)))
        return [Found(i) for value in ids for i in self.answers.get(value, [])]

    def close(self) -> None:
        self.closed = True


def test_plan_shows_what_a_lookup_finds_for_the_rows_inputs() -> None:
    fake = _FakeLookups({"12": [5], "11": [4]})
    planned = plan_command(
        _membership(),
        "public.invoices",
        {"id": 70, "subscription_id": 12},
        before={"id": 70, "subscription_id": 11},
        database=lambda source: fake,
    )
    assert fake.asked == [(MEMBERS_OF_SUBSCRIPTIONS, ["12", "11"])] and fake.closed
    assert describe_plan("public.invoices", "u", planned) == (
        "u on public.invoices: members/5 (via the lookup "
        "resources.members.triggers[1].lookup with ids 12, 11)\n"
        "u on public.invoices: members/4 (via the lookup "
        "resources.members.triggers[1].lookup with ids 12, 11)"
    )
    nothing = plan_command(
        _membership(), "public.members", {"id": 9}, database=lambda source: _FakeLookups({})
    )
    assert describe_plan("public.members", "u", nothing) == (
        "u on public.members: members/9\n"
        "u on public.members: the lookup resources.subscriptions.triggers[1].lookup with ids 9 "
        "finds nothing"
    )


def test_plan_without_lookup_inputs_needs_no_database() -> None:
    def no_database(source: DatabaseSource) -> LookupDatabase:
        raise AssertionError("plan connected to the database")

    planned = plan_command(_membership(), "public.subscriptions", {"id": 3}, database=no_database)
    assert describe_plan("public.subscriptions", "c", planned) == (
        "c on public.subscriptions: subscriptions/3"
    )
    null_input = plan_command(
        _membership(), "public.invoices", {"id": 70, "subscription_id": None}, database=no_database
    )
    assert describe_plan("public.invoices", "u", null_input) == (
        "u on public.invoices: makes nothing dirty"
    )
