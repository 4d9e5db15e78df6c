"""``reach-sync test --e2e``: a case through the whole pipeline (Debezium on the case's own
database, Kafka, the router's triggers and lookups, the syncer) gives the verdict the direct
run gives. One case of each example, with several steps: a skip, a lookup trigger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The command as a partner runs it, in a process of its own: the pipeline it runs in-process
# leaves its consumers to the process's end (the local broker's setting), not to this one's.
RUN_BOUND_S = 300


@pytest.mark.parametrize(
    ("definition", "case"),
    [("shop.yaml", "unchanged_is_not_sent"), ("subscriptions.yaml", "yearly_plan")],
    ids=["shop-skips-unchanged", "studios-plan-lookup"],
)
def test_a_case_passes_through_the_whole_pipeline(
    definition: str, case: str, state_root: Path
) -> None:
    state = state_root / f"e2e-cases-{case}"
    state.mkdir(exist_ok=True)
    path = REPO / "examples" / definition
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumer.cli.main",
            "test",
            str(path),
            "--e2e",
            "-k",
            case,
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_BOUND_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 0 failed" in done.stdout
