"""A resource's definition fingerprint (consumer/backfill/fingerprint.py): an edit of the
definition file changes exactly the part it touches, and edits that change nothing sent to Reach
(triggers, delivery, audit, how the backfill walks) change no part at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from redis.asyncio import Redis

from consumer.backfill.fingerprint import PARTS, FingerprintStore, changes, fingerprint, parts_of
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from tests.shop_definition import EXAMPLE, OFFLINE_ENV

Edit = Callable[[dict[str, Any]], None]


def _edited(tmp_path: Path, edit: Edit) -> SyncDefinition:
    """examples/shop.yaml with ``edit`` applied to the customers resource, as a partner would."""
    data = yaml.safe_load(EXAMPLE.read_text())
    edit(data["resources"]["customers"])
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_definition(path, OFFLINE_ENV)


def _changed_parts(tmp_path: Path, edit: Edit) -> list[str]:
    before = parts_of(load_definition(EXAMPLE, OFFLINE_ENV).resources["customers"])
    after = parts_of(_edited(tmp_path, edit).resources["customers"])
    assert set(before) == set(after) == set(PARTS)
    return [part for part in PARTS if before[part] != after[part]]


def _set(path: str, value: object) -> Edit:
    """Set a dotted path inside the resource."""

    def edit(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = resource
        for name in parents:
            target = target[int(name)] if isinstance(target, list) else target[name]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return edit


def test_the_same_definition_loaded_twice_has_the_same_fingerprint(tmp_path: Path) -> None:
    one = parts_of(load_definition(EXAMPLE, OFFLINE_ENV).resources["customers"])
    two = parts_of(_edited(tmp_path, lambda r: None).resources["customers"])
    assert one == two
    assert fingerprint(one) == fingerprint(two)


def test_the_two_resources_of_the_example_have_different_fingerprints() -> None:
    resources = load_definition(EXAMPLE, OFFLINE_ENV).resources
    assert fingerprint(parts_of(resources["customers"])) != fingerprint(
        parts_of(resources["transactions"])
    )


@pytest.mark.parametrize(
    ("edit", "part"),
    [
        (_set("mapping.country", {"column": "country"}), "mapping"),
        (_set("mapping.email", {"column": "email", "pii": "hash"}), "mapping"),
        (_set("mapping.createdAt", {"column": "created_at", "format": "date"}), "mapping"),
        (_set("groups.rules.0.when", "lifetime_value_cents >= 50000"), "groups"),
        (
            lambda r: r["groups"]["rules"].append({"name": "vip", "when": "true"}),
            "groups",
        ),
        (lambda r: r.pop("groups"), "groups"),
        (_set("query", "SELECT 1 AS id, 't' AS tenant WHERE 1 = ANY(%(ids)s)"), "query"),
        (_set("reach_schema", "shop_customers_v2"), "reach_schema"),
        (_set("key", "customer_id"), "key"),
        (_set("tenant", "merchant"), "tenant"),
    ],
    ids=[
        "a new field",
        "a pii policy",
        "a format",
        "a group rule",
        "a new group",
        "no groups",
        "the query",
        "the reach schema",
        "the key",
        "the tenant column",
    ],
)
def test_an_edit_changes_exactly_its_part(tmp_path: Path, edit: Edit, part: str) -> None:
    assert _changed_parts(tmp_path, edit) == [part]


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["triggers"].pop(),
        _set("triggers.0.replica_identity", "full"),
        _set("delivery", {"mode": "realtime", "window_ms": 50}),
        _set("audit_values", False),
        _set("tenants_query", "SELECT 'merchant-1'"),
        _set("backfill", {"since_column": "created_at"}),
        lambda r: r.update(mapping=dict(reversed(list(r["mapping"].items())))),
    ],
    ids=[
        "a trigger removed",
        "a replica identity",
        "delivery",
        "audit values",
        "tenants query",
        "backfill settings",
        "mapping written in another order",
    ],
)
def test_an_edit_that_changes_nothing_sent_changes_no_part(tmp_path: Path, edit: Edit) -> None:
    assert _changed_parts(tmp_path, edit) == []


class _Strings:
    """The two Redis commands FingerprintStore uses, in memory."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def mget(self, keys: list[str]) -> list[str | None]:
        return [self.values.get(k) for k in keys]

    async def set(self, key: str, value: str) -> bool:
        self.values[key] = value
        return True


async def test_a_first_run_stores_the_fingerprints_and_reports_no_change() -> None:
    redis = _Strings()
    store = FingerprintStore(cast(Redis, redis), "prefix")
    definition = load_definition(EXAMPLE, OFFLINE_ENV)
    assert await changes(definition, store) == []
    assert set(redis.values) == {"prefix:fingerprint:customers", "prefix:fingerprint:transactions"}
    assert (await store.held(["customers"]))["customers"] == parts_of(
        definition.resources["customers"]
    )
    assert await changes(definition, store) == []


async def test_an_edited_resource_is_reported_with_the_parts_that_changed(tmp_path: Path) -> None:
    store = FingerprintStore(cast(Redis, _Strings()), "prefix")
    await changes(load_definition(EXAMPLE, OFFLINE_ENV), store)

    def edit(resource: dict[str, Any]) -> None:
        resource["reach_schema"] = "shop_customers_v2"
        resource["mapping"]["country"] = {"column": "country"}

    edited = _edited(tmp_path, edit)
    (change,) = await changes(edited, store)
    assert change.resource == "customers"
    assert change.parts == ("mapping", "reach_schema")
    assert change.moves_schema
    assert change.fingerprint == fingerprint(parts_of(edited.resources["customers"]))
    # Reported until a resync stores the new fingerprint (resync.py), then no more.
    assert [c.resource for c in await changes(edited, store)] == ["customers"]
    await store.store("customers", change.new)
    assert await changes(edited, store) == []


async def test_a_change_that_keeps_the_schema_does_not_move_it(tmp_path: Path) -> None:
    store = FingerprintStore(cast(Redis, _Strings()), "prefix")
    await changes(load_definition(EXAMPLE, OFFLINE_ENV), store)
    edited = _edited(tmp_path, _set("groups.rules.0.when", "lifetime_value_cents >= 1"))
    (change,) = await changes(edited, store)
    assert change.parts == ("groups",) and not change.moves_schema
