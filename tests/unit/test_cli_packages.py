"""The product's command line without the local stack or the sandbox installed: their commands
answer with what to install, and everything else works."""

from __future__ import annotations

import sys

import pytest

from consumer.cli.main import build_parser, main


@pytest.mark.parametrize(
    ("argv", "package"),
    [
        (["dev", "up", "--json"], "reach-devstack"),
        (["demo"], "reach-devstack"),
        (["sandbox", "--port", "1"], "reach-sandbox"),
    ],
)
def test_a_command_of_a_package_not_installed_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    package: str,
) -> None:
    # None in sys.modules makes an import of that name raise ImportError.
    monkeypatch.setitem(sys.modules, "reach_devstack.cli", None)
    monkeypatch.setitem(sys.modules, "reach_sandbox.cli", None)
    assert main(argv) == 2
    assert f"needs the {package} package" in capsys.readouterr().err


def test_the_product_commands_need_neither_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "reach_devstack.cli", None)
    monkeypatch.setitem(sys.modules, "reach_sandbox.cli", None)
    args = build_parser().parse_args(["validate", "examples/shop.yaml"])
    assert args.command == "validate"
