"""``reach-sync export`` and ``sample`` refuse a bad command line before they read anything
(consumer/cli/export.py): an unknown resource exits 2 naming it, an out directory that holds
something is refused and left as it was, a count that is not positive is a usage error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from consumer.cli.export import add_export_commands
from tests.shop_definition import EXAMPLE, OFFLINE_ENV


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)


def reach_sync(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="reach-sync")
    add_export_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    code: int = args.handler(args)
    return code


@pytest.mark.parametrize("command", ["export", "sample"])
def test_a_resource_the_definition_lacks_is_named_and_exits_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--config", EXAMPLE, "--resource", "orders"]
    extra = ["--out", tmp_path / "out"] if command == "export" else ["--count", "1"]
    assert reach_sync(*argv, *extra) == 2
    assert "no resource orders" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_directory_that_is_not_empty_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    argv = ["export", "--config", EXAMPLE, "--resource", "customers", "--out", tmp_path]
    assert reach_sync(*argv) == 1
    assert f"{tmp_path} is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


@pytest.mark.parametrize("count", ["0", "-3", "many"])
def test_a_sample_count_that_is_not_positive_is_a_usage_error(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        reach_sync("sample", "--config", EXAMPLE, "--resource", "customers", "--count", count)
    assert exited.value.code == 2
    assert "--count" in capsys.readouterr().err
