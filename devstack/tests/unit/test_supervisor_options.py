"""The supervisor behind `reach-sync dev up` gets the stack's options as JSON on its command
line: every option comes back as it was given."""

from __future__ import annotations

from pathlib import Path

from reach_devstack.stack import StackOptions
from reach_devstack.supervisor import options_from_json, options_to_json


def test_every_option_survives_the_trip_through_json(tmp_path: Path) -> None:
    options = StackOptions(
        state_dir=tmp_path,
        with_broker=False,
        seed_shop=False,
        reach_schemas=tmp_path / "schemas.yaml",
        tenants=(("t-1", "merchant-1"),),
        debezium_tables=("public.members",),
        snapshot_mode="no_data",
        durable_broker=True,
    )
    assert options_from_json(options_to_json(options)) == options


def test_the_default_options_survive_the_trip_through_json(tmp_path: Path) -> None:
    options = StackOptions(state_dir=tmp_path, reach_schemas=None)
    assert options_from_json(options_to_json(options)) == options
    assert options_from_json(options_to_json(StackOptions(tmp_path))) == StackOptions(tmp_path)
