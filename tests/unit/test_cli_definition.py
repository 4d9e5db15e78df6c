"""Every command that reads a definition takes it the same way: ``FILE`` or ``--config FILE``;
both only when they name the same file; neither is a usage error. And a reader that goes away
(``reach-sync status | head``) ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.cli.commands import ROLE_HELP
from consumer.cli.common import definition_path
from consumer.cli.main import build_parser, main
from tests.shop_definition import EXAMPLE, OFFLINE_ENV

ROOT = Path(__file__).parents[2]
DEFINITION = "examples/shop.yaml"

# Each command that reads a definition: its words, and arguments it needs besides the definition
# (given after it, as a user would).
COMMANDS: list[tuple[list[str], list[str]]] = [
    (["run"], ["--role", "syncer"]),
    (["validate"], []),
    (["plan"], ["--table", "public.customers", "--row", "{}"]),
    (["preview"], ["customers", "42"]),
    (["dlq", "list"], ["--kind", "event"]),
    (["dlq", "replay"], ["--dry-run"]),
    (["audit", "why"], ["customers", "42"]),
    (["status"], ["--interval", "0.5"]),
]
IDS = [" ".join(words) for words, _ in COMMANDS]


@pytest.mark.parametrize(("words", "rest"), COMMANDS, ids=IDS)
def test_every_command_takes_the_definition_as_file_or_with_config(
    words: list[str], rest: list[str]
) -> None:
    parser = build_parser()
    given = [
        [*words, DEFINITION, *rest],
        [*words, "--config", DEFINITION, *rest],
        [*words, *rest, "--config", DEFINITION],
        [*words, DEFINITION, *rest, "--config", f"./{DEFINITION}"],  # the same file twice
    ]
    for argv in given:
        assert definition_path(parser.parse_args(argv)) in (
            Path(DEFINITION),
            Path(f"./{DEFINITION}"),
        ), argv


def test_the_other_arguments_stay_where_they_were() -> None:
    args = build_parser().parse_args(["audit", "why", "customers", "42", "--config", DEFINITION])
    assert (args.resource, args.entity_id, args.file) == ("customers", "42", None)
    args = build_parser().parse_args(["preview", DEFINITION, "customers", "42"])
    assert (args.file, args.resource, args.id) == (Path(DEFINITION), "customers", "42")


@pytest.mark.parametrize(("words", "rest"), COMMANDS, ids=IDS)
def test_two_different_definitions_are_a_usage_error(
    words: list[str], rest: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args([*words, DEFINITION, *rest, "--config", "other.yaml"])
    with pytest.raises(SystemExit) as caught:
        definition_path(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"reach-sync {' '.join(words)}: error: two sync definitions given" in err
    assert f"{DEFINITION} and --config other.yaml" in err


@pytest.mark.parametrize(("words", "rest"), COMMANDS, ids=IDS)
def test_no_definition_is_a_usage_error(
    words: list[str], rest: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args([*words, *rest])
    with pytest.raises(SystemExit) as caught:
        definition_path(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: reach-sync {' '.join(words)}")
    assert "which sync definition? give its file: FILE or --config FILE" in err


def test_validate_runs_with_either_form(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["validate", str(EXAMPLE)]) == 0
    assert main(["validate", "--config", str(EXAMPLE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [lines[0], lines[0]]
    assert lines[0].startswith(f"{EXAMPLE}: valid. resources: customers")


def test_validate_of_a_bad_definition_names_file_line_and_field(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REACH_SYNC_REACH_URL")
    assert main(["validate", "--config", str(EXAMPLE)]) == 2
    lines = EXAMPLE.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith("base_url:"))
    assert capsys.readouterr().err == (
        f"{EXAMPLE}:{line}: destination.base_url: environment variable REACH_SYNC_REACH_URL"
        " is not set\n"
    )


def test_run_says_what_each_role_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["run", "--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--role {all,router,syncer}" in shown
    assert " ".join(ROLE_HELP.split()) in shown
    for said in ("all (the default): both", "router: stage 1", "syncer: stage 2"):
        assert said in ROLE_HELP
    assert build_parser().parse_args(["run", "x.yaml"]).role == "all"


def test_a_reader_that_went_away_ends_the_command_quietly() -> None:
    """``reach-sync validate FILE | head -0``, exactly: stdout's reader is gone before the
    command writes. No traceback, no "Exception ignored" at exit; exit code 1 (Python's
    convention for EPIPE, from the docs' note on SIGPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "consumer.cli.main", "validate", str(EXAMPLE)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **OFFLINE_ENV},
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")
