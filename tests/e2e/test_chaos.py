"""The chaos suite's short seeded run, in CI: reach-sync converges under every kind of fault.

Two routers and two syncers in one group, at least 10,000 source changes, every fault kind of
the schedule at least once (kill -9 every few seconds, SIGSTOP past the session timeout, Redis
restarted and flushed, Postgres down, Reach's 429s, 5xx, lost answers, hangs, cut connections
and slow batches, 45 kinds of malformed events and 5 kinds of refused rows); then independent
checks: the sandbox equals the database, no version went backward, every applied state was
audited, no offset was committed before Reach held its state, every malformed input was
dead-lettered with its reason in time, nothing leaked, no process crashed. What each means:
docs/reliability.md. The run starts its own stack.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reach_devstack.chaos.plan import ChaosPlan
from reach_devstack.chaos.run import report, run_chaos

SEED = 20261205
CHANGES = 10_000


# The run takes about 4.5 minutes on a 2-core machine; a failing one waits out its settle bound
# (5 minutes) and must still get to print its report.
@pytest.mark.timeout(900)
def test_a_short_seeded_chaos_run_passes_every_check(state_root: Path) -> None:
    result = run_chaos(ChaosPlan(seed=SEED, changes=CHANGES, rate=100.0), state_root / "chaos")
    lines = report(result)
    print("\n".join(lines))
    assert result.source_changes >= CHANGES
    assert not result.kinds_missing, lines
    assert result.passed, lines
