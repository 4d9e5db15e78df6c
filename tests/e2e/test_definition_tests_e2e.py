"""``reach-sync test --e2e``: a case through the whole pipeline (Debezium on the case's own
database, Kafka, the router's triggers and lookups, the syncer) gives the verdict the direct
run gives. One case of each example, with several steps: a skip, a lookup trigger."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.cli.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("definition", "case"),
    [("shop.yaml", "unchanged_is_not_sent"), ("subscriptions.yaml", "yearly_plan")],
    ids=["shop-skips-unchanged", "studios-plan-lookup"],
)
def test_a_case_passes_through_the_whole_pipeline(
    definition: str, case: str, state_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = state_root / f"e2e-cases-{case}"
    state.mkdir(exist_ok=True)
    path = REPO / "examples" / definition
    code = main(["test", str(path), "--e2e", "-k", case, "--state-dir", str(state)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 passed, 0 failed" in out
