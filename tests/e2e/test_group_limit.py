"""Two reach-sync processes in one consumer group, against a group-wide rate limit: together they
stay within it.

``destination.rate_limit.group_requests_per_s`` is the whole group's; each process takes its
share through Redis (consumer/reach/group_share.py). Both processes here are the real command,
each with half of the dirty topic's partitions, and both send during a paced stream of changes
that asks for far more requests than the limit allows. The sandbox's request log is the judge:
the requests of both together, in any one second, stay within the group's limit plus a small
stated margin. Everything lands afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import PipelineProcess, Sandbox, assert_converged, wait_for
from tests.e2e.pressure import (
    dead_letter_count,
    definition_file,
    most_in_any_window,
    requests_since,
)

GROUP_RATE = 6.0  # requests per second, for the whole group
# A process's burst is 1 (evenly paced). Tolerated above the rate in any one second: a newcomer's
# share before the others refresh theirs (group_share.py: at most REFRESH_S, both joined before
# the measured stream), and the sandbox stamping requests late when this shared machine stalls it.
MARGIN = 2
BOUND = int(GROUP_RATE) + MARGIN
STREAM_RATE = 10.0  # sales a second, each two commits
STREAM_SECONDS = 15.0
MERCHANTS = (1, 2, 3)
CONVERGE_S = 300.0


def _stream(dsn: str, run_id: str) -> None:
    """New customers of every merchant, then a paced stream of sales and their completion: many
    small windows, so each process has more requests to make than its share lets through."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        customers = []
        for n in range(30):
            row = conn.execute(
                "INSERT INTO customers (merchant_id, email) VALUES (%s, %s) RETURNING id",
                (MERCHANTS[n % 3], f"group-{run_id}-{n}@example.com"),
            ).fetchone()
            assert row is not None
            customers.append(int(row[0]))
        started = time.monotonic()
        for step in range(int(STREAM_RATE * STREAM_SECONDS)):
            time.sleep(max(0.0, started + step / STREAM_RATE - time.monotonic()))
            row = conn.execute(
                "INSERT INTO transactions (merchant_id, customer_id, status, amount_cents)"
                " SELECT merchant_id, id, 'pending', %s FROM customers WHERE id = %s RETURNING id",
                (2000 + step, customers[step % len(customers)]),
            ).fetchone()
            assert row is not None
            conn.execute("UPDATE transactions SET status = 'completed' WHERE id = %s", (row[0],))


def test_two_processes_stay_within_the_group_limit_together(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    sandbox = Sandbox.of(shop_stack)
    name = unique("grouplimit")
    config = definition_file(tmp_path, name, {"rate_limit": {"group_requests_per_s": GROUP_RATE}})
    processes = [
        PipelineProcess(shop_stack, name, tmp_path / tag, live_stats=True, config=config)
        for tag in ("a", "b")
    ]
    try:
        for process in processes:
            process.start()

        def both_alive() -> None:
            for process in processes:
                process.check_alive()

        # Both joined the group and both send (the shop's history is a backlog for a new group).
        wait_for(
            lambda: all(p.counters().get("sent", 0) > 0 for p in processes),
            CONVERGE_S,
            "both processes to send",
            guard=both_alive,
        )
        first_seq = sandbox.last_request_seq()
        sent_before = [p.counters()["sent"] for p in processes]
        _stream(shop_stack.postgres_dsn, uuid.uuid4().hex[:8])
        assert_converged(processes[0].definition, shop_stack, CONVERGE_S)
        both_alive()
        sent_after = [p.counters()["sent"] for p in processes]
        last_seq = sandbox.last_request_seq()
    finally:
        for process in processes:
            process.ensure_stopped()

    api = [
        r
        for r in requests_since(sandbox, first_seq)
        if r["seq"] <= last_seq and r["path"].startswith("/api/")
    ]
    busiest = most_in_any_window([r["at"] for r in api])
    seconds = api[-1]["at"] - api[0]["at"] if api else 0.0
    report = (
        f"{len(api)} requests in {seconds:.1f} s, most in any 1 s: {busiest} (bound {BOUND});"
        f" sent per process during the stream: "
        f"{[after - before for after, before in zip(sent_after, sent_before, strict=True)]}"
    )
    print(report)
    # Both processes sent while the limit was measured: it really was shared.
    assert all(after > before for after, before in zip(sent_after, sent_before, strict=True)), (
        report
    )
    # The limit was the constraint: the requests ran at about the group's rate, not below it.
    assert len(api) >= GROUP_RATE * seconds * 0.5 and seconds > 5, report
    assert busiest <= BOUND, report
    assert dead_letter_count(processes[0].definition) == 0
