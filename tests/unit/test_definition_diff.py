"""``reach-sync diff OLD NEW`` says what a definition change does (consumer/definition_diff.py):
which resources project differently and will be re-synced, triggers, delivery, and the settings
that move reach-sync's state, each with its consequence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.cli.main import main
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.definition_diff import diff_definitions
from tests.shop_definition import EXAMPLE, OFFLINE_ENV


def _changed(tmp_path: Path, edit: Any, name: str = "new.yaml") -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _load(path: Path) -> SyncDefinition:
    return load_definition(path, OFFLINE_ENV)


def _lines(tmp_path: Path, edit: Any) -> list[str]:
    old, new = _load(EXAMPLE), _load(_changed(tmp_path, edit))
    return [d.line() for d in diff_definitions(old, new)]


def test_the_same_definition_has_no_difference() -> None:
    assert diff_definitions(_load(EXAMPLE), _load(EXAMPLE)) == []


def test_a_new_mapped_field_says_the_resource_is_re_synced_and_names_the_field(
    tmp_path: Path,
) -> None:
    def edit(data: Any) -> None:
        data["resources"]["customers"]["mapping"]["city"] = {"column": "city"}

    assert _lines(tmp_path, edit) == [
        "resources.customers: projects differently (mapping) (re-synced when `run` starts)",
        "resources.customers.mapping.city: added (column city, format raw, pii none)",
    ]


def test_a_changed_group_rule_and_pii_policy_show_old_and_new(tmp_path: Path) -> None:
    def edit(data: Any) -> None:
        customers = data["resources"]["customers"]
        customers["groups"]["rules"][0]["when"] = "lifetime_value_cents >= 20000"
        customers["mapping"]["email"]["pii"] = "hash"

    lines = _lines(tmp_path, edit)
    assert lines[0].startswith("resources.customers: projects differently (mapping, groups)")
    assert (
        "resources.customers.mapping.email: column email, format raw, pii send"
        " → column email, format raw, pii hash"
    ) in lines
    assert (
        "resources.customers.groups.rules.high_value: lifetime_value_cents >= 100000"
        " → lifetime_value_cents >= 20000"
    ) in lines


def test_with_resync_manual_the_reviewer_is_told_the_command(tmp_path: Path) -> None:
    def edit(data: Any) -> None:
        data["resync"] = "manual"
        data["resources"]["transactions"]["mapping"].pop("currency")

    lines = _lines(tmp_path, edit)
    assert (
        "resources.transactions: projects differently (mapping) (resync: manual, run "
        "`reach-sync resync --resource transactions`)"
    ) in lines
    assert "resources.transactions.mapping.currency: removed (Reach keeps its value)" in lines
    assert "resync: auto → manual" in lines


def test_triggers_and_delivery_changes_do_not_re_sync(tmp_path: Path) -> None:
    def edit(data: Any) -> None:
        transactions = data["resources"]["transactions"]
        transactions["triggers"].append({"table": "public.refunds", "id": "transaction_id"})
        transactions["delivery"] = {"mode": "batch", "window_ms": 100}

    assert _lines(tmp_path, edit) == [
        "resources.transactions.triggers: added public.refunds (id transaction_id, "
        "replica_identity default)",
        "resources.transactions.delivery.mode: realtime → batch",
    ]


def test_settings_that_move_state_say_what_follows(tmp_path: Path) -> None:
    def edit(data: Any) -> None:
        data["redis"]["key_prefix"] = "reach-sync:elsewhere"
        data["topics"]["dirty"] = "other.dirty"

    lines = _lines(tmp_path, edit)
    assert any(
        line.startswith("redis.key_prefix:")
        and line.endswith("(a fresh last-sent store: every record is sent again)")
        for line in lines
    ), lines
    assert any(
        line.startswith("topics.dirty:") and "keys still waiting on the old one" in line
        for line in lines
    ), lines


def test_added_and_removed_resources_are_named(tmp_path: Path) -> None:
    def edit(data: Any) -> None:
        data["resources"]["buyers"] = data["resources"].pop("customers")

    assert _lines(tmp_path, edit) == [
        "resources.customers: removed (its records stay in Reach)",
        "resources.buyers: added (history reaches Reach by a backfill)",
    ]


def test_diff_exits_0_when_equal_1_when_different_and_2_on_a_bad_definition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    changed = _changed(tmp_path, lambda data: data["resources"]["customers"].update(key="email"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nresources: {}\n")

    assert main(["diff", str(EXAMPLE), str(EXAMPLE)]) == 0
    assert "no difference" in capsys.readouterr().out
    assert main(["diff", str(EXAMPLE), str(changed)]) == 1
    assert "resources.customers.key: id → email" in capsys.readouterr().out
    assert main(["diff", str(EXAMPLE), str(broken)]) == 2
