"""`reach-sync run` tunes its own process: each check runs in a fresh interpreter, since the
collector's settings are the whole process's and must not leak into the test run."""

from __future__ import annotations

import json
import subprocess
import sys

from consumer.cli.process_tuning import GC_YOUNG_THRESHOLD

_REPORT = """
import gc, json
from consumer.cli.process_tuning import tune_gc
{before}
tune_gc()
generations = [len(gc.get_objects(generation)) for generation in range(3)]
print(json.dumps({{"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "generations": generations}}))
"""


def _tuned(before: str = "") -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _REPORT.format(before=before)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_tuning_freezes_what_the_start_made_and_raises_the_young_threshold() -> None:
    report = _tuned()
    assert report["threshold"] == [GC_YOUNG_THRESHOLD, 10, 10]
    # Everything alive went to the permanent generation: no collection walks it again.
    assert isinstance(report["frozen"], int) and report["frozen"] > 1000
    generations = report["generations"]
    assert isinstance(generations, list) and generations[1:] == [0, 0] and generations[0] < 10


def test_a_higher_threshold_set_before_is_kept() -> None:
    report = _tuned(f"gc.set_threshold({GC_YOUNG_THRESHOLD * 2}, 5, 7)")
    assert report["threshold"] == [GC_YOUNG_THRESHOLD * 2, 5, 7]
