"""A revert that races the retry of a send whose answer was lost, on the whole pipeline.

A customer goes from S0 to S1 while Reach's answer is lost: the batch POST is answered 502
after Reach applied it, or the batch is accepted and reading its status fails. Both answers
carry Retry-After, so the window's retry (if there is one) comes seconds later; before it, the
customer goes back to S0 in the database. Reach must end at S0: a last-sent entry still
claiming S0 would let the retry skip it, and Reach would keep S1 for good.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import Sandbox, insert_customer, pipeline_thread, sql, wait_for, wait_quiet

SCHEMA = "shop_customers"
RETRY_AFTER_S = 4  # longer than it takes to see S1 in Reach and revert the row
LOST_POST = {
    "kind": "error",
    "status": 502,
    "after_apply": True,
    "count": 1,
    "method": "POST",
    "path_prefix": f"/api/resources/{SCHEMA}/batch",
    "retry_after_seconds": RETRY_AFTER_S,
}
UNREADABLE_STATUS = {
    "kind": "error",
    "status": 503,
    "count": 1,
    "method": "GET",
    "path_prefix": "/api/batches/",
    "retry_after_seconds": RETRY_AFTER_S,
}


@pytest.mark.parametrize(
    "fault", [LOST_POST, UNREADABLE_STATUS], ids=["502-after-apply", "status-unreadable"]
)
def test_a_revert_racing_the_retry_of_a_lost_answer_reaches_reach(
    shop_stack: StackEndpoints, unique: Callable[[str], str], fault: dict[str, Any]
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    customer, tenant = insert_customer(dsn, 2, f"{unique('lost')}@example.com", first_name="S0")
    external_id = str(customer)

    def first_name() -> str | None:
        current = sandbox.current(tenant, SCHEMA, external_id)
        return None if current is None else current.get("firstName")

    with pipeline_thread(shop_stack, unique("lost")) as running:
        wait_for(lambda: first_name() == "S0", 90, "S0 in Reach", guard=running.check_alive)
        wait_quiet(running.counters, quiet_s=2.0, timeout_s=120)
        mark = sandbox.last_request_seq()
        with sandbox.faults({**fault, "tenant": tenant}):
            sql(dsn, ("UPDATE customers SET first_name = 'S1' WHERE id = %s", (customer,)))
            wait_for(lambda: first_name() == "S1", 60, "S1 in Reach", guard=running.check_alive)
            sql(dsn, ("UPDATE customers SET first_name = 'S0' WHERE id = %s", (customer,)))
        wait_for(
            lambda: first_name() == "S0",
            60,
            "the revert to S0 in Reach",
            guard=running.check_alive,
        )
        wait_quiet(running.counters, quiet_s=2.0, timeout_s=120)
        assert first_name() == "S0"
        # The fault did fire (no other fault is on): Reach's log has the lost answers.
        requests = sandbox.requests(mark, path_prefix=fault["path_prefix"])
        lost = [r for r in requests if r["status"] == fault["status"]]
        assert len(lost) == fault["count"], lost
