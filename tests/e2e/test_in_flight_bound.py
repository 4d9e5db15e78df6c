"""The process-wide in-flight bound: with Reach slowed down and a backlog several times the
bound, the syncer pauses every partition at the bound, never holds more than the bound (give or
take a message per poll of a partition assigned since the last pause), resumes below the
low-water mark, and everything lands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from reach_devstack.stack import StackEndpoints

from tests.e2e.conftest import EXAMPLE
from tests.e2e.helpers import Sandbox, assert_converged, pipeline_thread, sql

MAX_RECORDS = 100  # the smallest bound a definition may set
NEW_CUSTOMERS = 400
# A message adds at most one dirty key, and a poll takes at most what is left under the bound;
# a partition assigned after the pause may give one message per poll before it is paused too.
SLACK = 8
CONVERGE_S = 240.0


def test_a_slow_reach_and_a_backlog_stay_within_the_in_flight_bound(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    name = unique("inflight")
    data = yaml.safe_load(EXAMPLE.read_text())
    data["in_flight"] = {"max_records": MAX_RECORDS, "resume_below": 0.5}
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    # A backlog of new customers (each one a dirty customer), besides what the topics hold.
    sql(
        shop_stack.postgres_dsn,
        (
            "INSERT INTO customers (merchant_id, email)"
            " SELECT 1 + n %% 3, 'inflight-' || %s || '-' || n || '@example.com'"
            " FROM generate_series(1, %s) AS n",
            (name, NEW_CUSTOMERS),
        ),
    )
    sandbox = Sandbox.of(shop_stack)
    with (
        sandbox.faults({"kind": "latency", "ms": 300}),
        pipeline_thread(shop_stack, name, config=config) as running,
    ):
        assert_converged(running.definition, shop_stack, CONVERGE_S)
        running.check_alive()
        stats = running.stats.syncer

    assert stats.in_flight_pauses >= 1, "the backlog never reached the bound"
    assert MAX_RECORDS <= stats.in_flight_peak <= MAX_RECORDS + SLACK, stats.in_flight_peak
    assert stats.entities >= NEW_CUSTOMERS
