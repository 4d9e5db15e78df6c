"""``reach-sync backfill`` and ``resync`` refuse a bad command line before they touch anything
(consumer/cli/history.py): usage errors exit 2 and name the option."""

from __future__ import annotations

import pytest

from consumer.cli.main import main
from tests.shop_definition import EXAMPLE, OFFLINE_ENV


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--rate", "0", "--rate"),
        ("--rate", "fast", "--rate"),
        ("--metrics-port", "70000", "--metrics-port"),
        ("--page-size", "0", "--page-size"),
        ("--max-lag", "-1", "--max-lag"),
    ],
)
def test_an_option_out_of_range_is_a_usage_error_naming_it(
    option: str, value: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["backfill", "--config", str(EXAMPLE), option, value])
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_mark_complete_without_a_tenant_is_refused_before_anything_is_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["backfill", "--config", str(EXAMPLE), "--mark-complete"]) == 2
    assert "--mark-complete needs --tenant" in capsys.readouterr().err


def test_a_backfill_of_a_resource_the_definition_lacks_names_it_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["backfill", "--config", str(EXAMPLE), "--resource", "orders"]) == 2
    assert "no resource orders" in capsys.readouterr().err


def test_since_on_a_resource_without_a_since_column_names_the_resource(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["backfill", "--config", str(EXAMPLE), "--since", "2026-11-01"]) == 2
    assert "--since needs backfill.since_column on customers, transactions" in (
        capsys.readouterr().err
    )


def test_a_resync_of_a_resource_the_definition_lacks_names_it_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["resync", "--config", str(EXAMPLE), "--resource", "orders"]) == 2
    assert "no resource orders" in capsys.readouterr().err
