"""A 429 storm with Retry-After: the requests per second the sandbox sees stay within its limit
(plus its burst and a small stated margin), everything lands afterwards, nothing is dead-lettered.

The sandbox limits each tenant to ``SANDBOX_RATE`` requests per second (a token bucket of
``SANDBOX_BURST``) and answers 429 with ``Retry-After`` above it. reach-sync is configured a bit
above that limit (``CLIENT_RATE`` per tenant), so once the sandbox's burst is spent its 429s
come, and the limiter has to pause the tenant until Retry-After and slow it down. A new pipeline
reads the whole history of the shop (one catch-up burst) while the test adds a burst of its own.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import Sandbox, assert_converged, wait_for
from tests.e2e.pressure import (
    SandboxSwitches,
    by_tenant,
    dead_letter_count,
    definition_file,
    most_in_any_window,
    pipeline_from,
    requests_since,
)

SANDBOX_RATE = 5.0  # requests per second per tenant
SANDBOX_BURST = 5
CLIENT_RATE = 7.0  # destination.rate_limit.per_tenant_requests_per_s: a bit above the sandbox
CLIENT_BURST = 2
# Requests in one second above the sandbox's own bound (rate x 1 s + burst) that are tolerated:
# arrival times are stamped by the sandbox when it gets to a request, so on this shared machine a
# stalled sandbox stamps a few requests that were sent apart as if they came together.
MARGIN = 2
BOUND = int(SANDBOX_RATE) + SANDBOX_BURST + MARGIN
# The sandbox's Retry-After is the wait for its next token rounded up to whole seconds, at least
# 1 s. A request already on its way when a 429 was answered may arrive up to IN_FLIGHT_S after
# it (the shared machine can stall the sandbox); CLOCK_S absorbs stamping and timer jitter.
RETRY_AFTER_MIN_S = 1.0
IN_FLIGHT_S = 0.5
CLOCK_S = 0.05
CUSTOMERS_PER_MERCHANT = 30
SALES_PER_CUSTOMER = 2
STREAM_RATE = 12.0  # sales a second (each two commits): 180 sales in 15 s
MERCHANTS = (1, 2, 3)
CONVERGE_S = 240.0


def _burst(dsn: str, run_id: str) -> int:
    """Sign-ups at once, then a steady stream of sales and their completion for a few seconds
    (``STREAM_RATE`` changes a second, each its own transaction): small windows one after the
    other, so reach-sync has far more requests to make than the limit lets through. Returns the
    number of commits."""
    commits = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        customers: list[int] = []
        for merchant in MERCHANTS:
            for n in range(CUSTOMERS_PER_MERCHANT):
                row = conn.execute(
                    "INSERT INTO customers (merchant_id, email, first_name) VALUES (%s, %s, %s)"
                    " RETURNING id",
                    (merchant, f"storm-{run_id}-{merchant}-{n}@example.com", "Storm"),
                ).fetchone()
                assert row is not None
                customers.append(int(row[0]))
                commits += 1
        # Customers of the three merchants in turn, so every tenant is busy all along.
        turns = [
            customers[m * CUSTOMERS_PER_MERCHANT + n]
            for n in range(CUSTOMERS_PER_MERCHANT)
            for m in range(len(MERCHANTS))
        ]
        started = time.monotonic()
        for step, customer in enumerate(turns * SALES_PER_CUSTOMER):
            # Paced, not a pause: the next change is due at step / STREAM_RATE.
            time.sleep(max(0.0, started + step / STREAM_RATE - time.monotonic()))
            row = conn.execute(
                "INSERT INTO transactions (merchant_id, customer_id, status, amount_cents)"
                " SELECT merchant_id, id, 'pending', %s FROM customers WHERE id = %s"
                " RETURNING id",
                (1000 + step, customer),
            ).fetchone()
            assert row is not None
            conn.execute(
                "UPDATE transactions SET status = 'completed' WHERE id = %s", (int(row[0]),)
            )
            commits += 2
    return commits


def _early_requests(per_tenant: dict[str, list[Mapping[str, Any]]]) -> list[str]:
    """Requests that reached the sandbox while their tenant should have been paused: after a 429
    (whose Retry-After is at least RETRY_AFTER_MIN_S), later than IN_FLIGHT_S (a request already
    sent when the 429 was) and before the Retry-After was over."""
    early = []
    for tenant, rows in per_tenant.items():
        for refused in (r for r in rows if r["status"] == 429):
            start, end = refused["at"] + IN_FLIGHT_S, refused["at"] + RETRY_AFTER_MIN_S - CLOCK_S
            early += [
                f"{tenant}: {r['method']} {r['path']} {r['at'] - refused['at']:.3f} s after"
                f" the 429 of {refused['method']} {refused['path']}"
                for r in rows
                if start < r["at"] < end
            ]
    return early


def test_a_429_storm_stays_within_the_limit_and_everything_lands(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    sandbox = Sandbox.of(shop_stack)
    switches = SandboxSwitches(shop_stack)
    name = unique("ratelimited")
    config = definition_file(
        tmp_path,
        name,
        {
            "rate_limit": {
                "per_tenant_requests_per_s": CLIENT_RATE,
                "per_tenant_burst": CLIENT_BURST,
            }
        },
    )
    sandbox_limits = {
        "per_token": None,
        "per_tenant": {"rate_per_second": SANDBOX_RATE, "burst": SANDBOX_BURST},
    }

    with switches.limited(sandbox_limits) as in_force:
        assert in_force == sandbox_limits
        first_seq = sandbox.last_request_seq()
        with pipeline_from(shop_stack, name, config) as running:
            commits = _burst(shop_stack.postgres_dsn, uuid.uuid4().hex[:8])
            # The storm really happened: the sandbox refused requests over its limit...
            wait_for(
                lambda: any(r["status"] == 429 for r in requests_since(sandbox, first_seq)),
                CONVERGE_S,
                "a 429 from the sandbox",
                guard=running.check_alive,
            )
            # ...and everything landed all the same: Reach equals the projection.
            assert_converged(running.definition, shop_stack, CONVERGE_S)
            running.check_alive()
            counters = running.counters()
        # Stopped: every request it made is in the log, every dead letter on the topic.
        requests = requests_since(sandbox, first_seq)
        dead = dead_letter_count(running.definition)

    api = [r for r in requests if r["path"].startswith("/api/")]
    statuses = Counter(r["status"] for r in api)
    per_tenant = by_tenant(api)
    busiest = {
        tenant: most_in_any_window([r["at"] for r in rows]) for tenant, rows in per_tenant.items()
    }
    accepted = {
        tenant: most_in_any_window([r["at"] for r in rows if r["status"] != 429])
        for tenant, rows in per_tenant.items()
    }
    report = (
        f"{commits} commits; {len(api)} requests {dict(statuses)}; most in any 1 s per tenant:"
        f" {busiest} (accepted only {accepted}); bound {BOUND}; syncer {counters}"
    )
    print(report)
    assert statuses[429] > 0, report
    assert set(per_tenant) == {"tenant-1", "tenant-2", "tenant-3"}, report
    # Requests per second per tenant, 429s included, never above the limit by more than MARGIN.
    assert all(most <= BOUND for most in busiest.values()), report
    # Retry-After was honoured: after a 429 its tenant got nothing new until the wait was over.
    early = _early_requests(per_tenant)
    assert early == [], (early, report)
    # Nothing was dead-lettered: not by the syncer, not by the router, not on the topic.
    assert (counters["dead_lettered"], dead) == (0, 0), report
    # Every 429 failed a window, which was retried after its Retry-After.
    assert counters["retries"] > 0, report
