"""A first start on topics that do not exist yet: the syncer must not subscribe to a dirty
topic before it exists, or it finds it only at its next metadata refresh (five minutes by
default) and changes wait that long.

The router creates the topic, but only after its startup checks; here those wait on a lock
held on the customers table, so the syncer is surely subscribed first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import psycopg
from reach_devstack.stack import StackEndpoints

from tests.e2e.conftest import RunningPipeline
from tests.e2e.helpers import Sandbox, insert_customer, wait_for

# Long enough for the syncer to subscribe while the router waits; far below the router's
# statement timeout (its startup query would fail).
ROUTER_HELD_S = 5.0


def test_changes_flow_at_once_when_the_router_starts_after_the_syncer_on_new_topics(
    shop_stack: StackEndpoints,
    pipeline: Callable[[str], AbstractContextManager[RunningPipeline]],
    unique: Callable[[str], str],
) -> None:
    name = unique("first-start")
    sandbox = Sandbox.of(shop_stack)
    with psycopg.connect(shop_stack.postgres_dsn) as lock:
        lock.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        with pipeline(name) as running:
            time.sleep(ROUTER_HELD_S)
            lock.rollback()
            customer, tenant = insert_customer(shop_stack.postgres_dsn, 1, f"{name}@example.com")
            wait_for(
                lambda: sandbox.current(tenant, "shop_customers", str(customer)) is not None,
                45,
                "the new customer in the sandbox",
                guard=lambda: _alive(running),
            )


def _alive(running: RunningPipeline) -> None:
    assert running.stats.router_error is None, f"the router stopped: {running.stats.router_error}"
