"""SQL on Postgres → Debezium → broker → reach-sync → sandbox equals the projection."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from reach_devstack.stack import StackEndpoints

from tests.e2e.conftest import RunningPipeline
from tests.e2e.helpers import Sandbox, converged, sql


def test_changes_of_every_kind_converge(
    shop_stack: StackEndpoints,
    pipeline: Callable[..., AbstractContextManager[RunningPipeline]],
) -> None:
    dsn = shop_stack.postgres_dsn
    with pipeline() as running:
        # The snapshot makes every seeded entity dirty: the sandbox fills up to equal the database.
        differences = converged(running.definition, shop_stack)
        assert all(d.equal for d in differences), differences
        assert {d.resource: d.checked > 0 for d in differences} == {
            "customers": True,
            "transactions": True,
        }

        sql(
            dsn,
            # A new customer in each of two tenants, with sales.
            "INSERT INTO customers (id, merchant_id, email, first_name) VALUES"
            " (900001, 1, 'new1@example.com', 'Nova'), (900002, 2, 'new2@example.com', 'Nia')",
            "INSERT INTO transactions (id, merchant_id, customer_id, status, amount_cents) VALUES"
            " (900101, 1, 900001, 'pending', 150000), (900102, 2, 900002, 'pending', 2500)",
            # Status lifecycle: pending → completed → refunded (lifetime value up, then down).
            "UPDATE transactions SET status = 'completed' WHERE id = 900101",
            "UPDATE transactions SET status = 'refunded' WHERE id = 900101",
            "UPDATE transactions SET status = 'completed' WHERE id = 900102",
        )
        assert all(d.equal for d in converged(running.definition, shop_stack))
        sql(
            dsn,
            # A field becomes empty: Reach must lose it (explicit null).
            "UPDATE customers SET first_name = NULL, phone = '+15550100' WHERE id = 900001",
            # A sale moves between customers of one tenant: both customers are recomputed.
            "INSERT INTO customers (id, merchant_id, email)"
            " VALUES (900003, 1, 'third@example.com')",
            "UPDATE transactions SET customer_id = 900003, status = 'completed' WHERE id = 900101",
            # Deletes of what Reach has: a sale, then its customer (now without sales).
            "DELETE FROM transactions WHERE id = 900102",
            "DELETE FROM customers WHERE id = 900002",
        )
        differences = converged(running.definition, shop_stack)
        assert all(d.equal for d in differences), differences

    # The moved sale's value left 900001 and arrived at 900003; 900002 is gone from Reach.
    sandbox = Sandbox.of(shop_stack)
    new1 = sandbox.history("merchant-1", "shop_customers", "900001")
    third = sandbox.history("merchant-1", "shop_customers", "900003")[-1]["data"]
    assert new1[-1]["data"]["lifetimeValue"] == 0 and "firstName" not in new1[-1]["data"]
    assert third["lifetimeValue"] == 1500.0 and third["segments"] == ["high_value"]
    for schema, tenant, external_id in (
        ("shop_customers", "merchant-2", "900002"),
        ("shop_transactions", "merchant-2", "900102"),
    ):
        versions = sandbox.history(tenant, schema, external_id)
        assert versions and versions[-1]["data"] is None, (schema, versions)
