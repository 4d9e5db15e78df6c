"""Crash: reach-sync killed with SIGKILL mid-work, started again in the same group, converges and
loses nothing.

The process is the real command (`python -m consumer.cli.main run --config examples/shop.yaml`). At
the kill, customer windows are in flight (their Reach batch is held in processing by a
batch_delay fault) and transaction windows are failing and retrying (Reach answers 503), so work
was read from the topics but not yet committed, and some of it never reached Reach at all.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import (
    REJOIN_S,
    PipelineProcess,
    Sandbox,
    assert_converged,
    insert_customer,
    insert_transaction,
    sql,
    wait_for,
)

CUSTOMERS_SCHEMA = "shop_customers"
TRANSACTIONS_SCHEMA = "shop_transactions"
CUSTOMERS = 6


def test_killed_mid_work_and_restarted_converges_and_loses_nothing(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("crash")
    customers: dict[int, str] = {}
    sales: dict[int, tuple[int, str]] = {}  # sale -> (customer, tenant)
    for n in range(CUSTOMERS):
        customer, tenant = insert_customer(dsn, 1 + n % 3, f"crash-{n}@example.com")
        customers[customer] = tenant
        sales[insert_transaction(dsn, customer, 1000 + n, "pending")] = (customer, tenant)
    doomed_sale = next(iter(sales))

    process = PipelineProcess(shop_stack, name, tmp_path)
    try:
        process.start()
        wait_for(
            lambda: all(
                sandbox.current(t, TRANSACTIONS_SCHEMA, str(s)) is not None
                and sandbox.current(t, CUSTOMERS_SCHEMA, str(c)) is not None
                for s, (c, t) in sales.items()
            ),
            90,
            "the new customers and sales in the sandbox",
            guard=process.check_alive,
        )
        requests_before = sandbox.last_request_seq()

        with sandbox.faults(
            {
                "kind": "batch_delay",
                "seconds": 3.0,
                "path_prefix": f"/api/resources/{CUSTOMERS_SCHEMA}",
            },
            {
                "kind": "error",
                "status": 503,
                "method": "POST",
                "path_prefix": f"/api/resources/{TRANSACTIONS_SCHEMA}",
            },
        ):
            sql(
                dsn,
                *[
                    ("UPDATE customers SET last_name = %s WHERE id = %s", ("crash-1", c))
                    for c in customers
                ],
                *[
                    (
                        "UPDATE transactions SET status = 'completed', amount_cents = %s"
                        " WHERE id = %s",
                        (200_000 + s % 1000, s),
                    )
                    for s in sales
                    if s != doomed_sale
                ],
                ("DELETE FROM transactions WHERE id = %s", (doomed_sale,)),
            )

            def in_flight() -> bool:
                log = sandbox.requests(requests_before)
                customer_batch_pending = any(
                    r["method"] == "POST"
                    and r["path"] == f"/api/resources/{CUSTOMERS_SCHEMA}/batch"
                    and r["status"] == 202
                    for r in log
                )
                sales_refused = any(
                    r["path"].startswith(f"/api/resources/{TRANSACTIONS_SCHEMA}")
                    and r["status"] == 503
                    for r in log
                )
                return customer_batch_pending and sales_refused

            wait_for(in_flight, 60, "windows in flight at Reach", guard=process.check_alive)
            assert process.kill() == -signal.SIGKILL
            # Reach refused every updated sale: only what was read but not committed can bring
            # them back.
            for sale, (_, tenant) in sales.items():
                if sale != doomed_sale:
                    current = sandbox.current(tenant, TRANSACTIONS_SCHEMA, str(sale))
                    assert current is not None and current["status"] == "pending", current

        # More changes while it is down, then the same group again.
        sql(
            dsn,
            *[
                ("UPDATE customers SET first_name = %s WHERE id = %s", ("Phoenix", c))
                for c in list(customers)[::2]
            ],
        )
        process.start()
        assert_converged(process.definition, shop_stack, timeout_s=REJOIN_S + 120)
        process.check_alive()

        # Every changed entity is as the database says, the delete included.
        for customer, tenant in customers.items():
            data = sandbox.current(tenant, CUSTOMERS_SCHEMA, str(customer))
            assert data is not None and data["lastName"] == "crash-1", data
        for sale, (_, tenant) in sales.items():
            data = sandbox.current(tenant, TRANSACTIONS_SCHEMA, str(sale))
            if sale == doomed_sale:
                assert data is None
            else:
                assert data is not None and data["status"] == "completed", data
        # A clean stop after the recovery: drained, committed, exit code 0.
        assert process.terminate() == 0, process.log()
    finally:
        process.ensure_stopped()
