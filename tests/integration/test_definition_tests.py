"""``reach-sync test`` on its own throwaway servers (Postgres with the partner's schema, Redis,
the sandbox with the partner's Reach schemas): the examples' cases pass, a failing case shows
its diff and fails the run, and a wrong definition or case file stops it before any case runs,
named by file and line."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from consumer.cli.main import main

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop.yaml"
STUDIOS = REPO / "examples" / "subscriptions.yaml"


def _state(state_root: Path, name: str) -> Path:
    path = state_root / name
    path.mkdir(exist_ok=True)
    return path


def _shop_cases(tmp_path: Path) -> Path:
    """A copy of the shop's cases whose suite names its files absolutely."""
    cases = tmp_path / "cases"
    shutil.copytree(REPO / "examples" / "shop.cases", cases)
    suite = (cases / "suite.yaml").read_text().replace("../../", f"{REPO}/")
    (cases / "suite.yaml").write_text(suite)
    return cases


@pytest.mark.parametrize(
    ("definition", "cases"), [(SHOP, 7), (STUDIOS, 5)], ids=["shop", "studios"]
)
def test_the_examples_cases_pass_and_junit_lists_each(
    definition: Path,
    cases: int,
    state_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    junit = tmp_path / "junit.xml"
    state = _state(state_root, f"cases-{definition.stem}")
    code = main(["test", str(definition), "--junit", str(junit), "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{cases} passed, 0 failed" in out
    root = ET.parse(junit).getroot()  # noqa: S314  # written by the run above
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (str(cases), "0", "0")


def test_a_failing_case_prints_its_diff_and_fails_the_run(
    state_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _shop_cases(tmp_path)
    case = cases / "repeat_buyer.yaml"
    case.write_text(
        case.read_text()
        .replace("completedOrders: 3}", "completedOrders: 4}")
        .replace("groups: [high_value, repeat_buyer]", "groups: [repeat_buyer]")
    )
    skipped = cases / "unchanged_is_not_sent.yaml"
    skipped.write_text(skipped.read_text().replace("10: {outcome: skipped}", "10: {outcome: sent}"))
    junit = tmp_path / "junit.xml"
    state = _state(state_root, "cases-failing")
    code = main(
        ["test", str(SHOP), "--cases", str(cases), "--junit", str(junit), "--state-dir", str(state)]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "5 passed, 2 failed" in out
    assert '-  "completedOrders": 4\n' in out.replace("          ", "")
    assert '+  "completedOrders": 3\n' in out.replace("          ", "")
    assert "groups: expected ['repeat_buyer'], got ['high_value', 'repeat_buyer']" in out
    assert "step 2 of 3" in out and "expected sent, got skipped" in out
    root = ET.parse(junit).getroot()  # noqa: S314
    assert root.get("failures") == "2"


def test_a_definition_wrong_for_the_schema_or_reach_stops_the_run_at_its_lines(
    state_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = STUDIOS.read_text()
    wrong = text.replace("plan: {column: plan}", "plan: {column: plann}").replace(
        "fullName: {column: full_name", "fulName: {column: full_name"
    )
    definition = tmp_path / "studios.yaml"
    definition.write_text(wrong)
    cases = tmp_path / "studios.cases"
    shutil.copytree(REPO / "examples" / "subscriptions.cases", cases)
    suite = (cases / "suite.yaml").read_text().replace("../", f"{REPO}/examples/")
    (cases / "suite.yaml").write_text(suite)
    state = _state(state_root, "cases-wrong-definition")
    code = main(["test", str(definition), "--state-dir", str(state)])
    captured = capsys.readouterr()
    assert code == 2
    line = wrong.splitlines().index("      plan: {column: plann}") + 1
    assert f"{definition}:{line}: resources.members.mapping.plan.column: " in captured.err
    assert "no column plann" in captured.err
    assert "resources.members.mapping.fulName: Reach schema studio_members has no property" in (
        captured.err
    )
    assert "passed" not in captured.out  # no case ran


def test_a_wrong_case_file_stops_the_run_before_any_server_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _shop_cases(tmp_path)
    (cases / "zz_wrong.yaml").write_text(
        "name: typo\nsql: SELECT 1\nexpect:\n  customers:\n    1: {outcom: sent}\n"
    )
    code = main(["test", str(SHOP), "--cases", str(cases)])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        f"{cases / 'zz_wrong.yaml'}:5: expect.customers.1.outcom: Extra inputs are not permitted"
        in err
    )


def test_a_case_whose_own_sql_fails_is_an_error_and_the_others_still_run(
    state_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = _shop_cases(tmp_path)
    (cases / "zz_bad_sql.yaml").write_text(
        "name: a typo in the case\nsql: INSERT INTO nowhere VALUES (1)\nexpect: {customers: {}}\n"
    )
    state = _state(state_root, "cases-bad-sql")
    code = main(["test", str(SHOP), "--cases", str(cases), "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert code == 1
    assert "ERROR  a typo in the case" in out
    assert 'step 1: the database refuses its changes: relation "nowhere" does not exist' in out
    assert "7 passed, 1 failed" in out
