"""No stale overwrite: for one entity, a state read earlier is never delivered after a state read
later, across windows, consumers and a rebalance.

A customer is triggered by its own row (customers topic) and by its sales (transactions topic),
which two routers read at the same moment. Each round changes a customer and its sales in one
SQL transaction, writing a counter that only grows: ``last_name = v<round>`` and sale amounts
derived from the round. In Reach's history of every entity, the counter must never go back, and
each customer version must be one consistent read (its lifetime value matches its round).

Reach batches are slowed down (batch_delay) and requests get random latency, so windows are in
flight while new triggers for the same entities arrive, and a second pipeline joins the group in
the middle of the rounds (a rebalance with windows in flight). Reach promises no order across
batches, and the sandbox shuffles each tenant's queued batches for the whole test, so a version
goes back if reach-sync sent an older read after a newer one, or if it ever had two unfinished
batches of one entity (the older may apply last). The history's ``seq`` is the apply order and
its ``arrivedAt`` tells the two apart; the history is checked before convergence, because a
stale overwrite that stays last also keeps the sandbox from converging.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import (
    LivePipeline,
    Sandbox,
    Version,
    caught_up,
    converged,
    insert_customer,
    insert_transaction,
    pipeline_thread,
)

CUSTOMERS_SCHEMA = "shop_customers"
TRANSACTIONS_SCHEMA = "shop_transactions"
CUSTOMERS_PER_MERCHANT = 2
SALES_PER_CUSTOMER = 2
ROUNDS_BEFORE_JOIN = 8
ROUNDS_AFTER_JOIN = 15
# The second pipeline's join: about half the session timeout, then the cooperative rounds, and
# the revoked partitions' windows in flight must finish first (batch_delay + latency, < 1 s).
JOIN_BOUND_S = 30.0
JOIN_DEADLINE_S = 150.0
FAULTS = (
    {"kind": "batch_delay", "seconds": 0.3, "path_prefix": f"/api/resources/{CUSTOMERS_SCHEMA}"},
    {"kind": "latency", "ms": 0, "max_ms": 150, "path_prefix": "/api/resources/"},
)
# Shuffled batch order: a fixed seed, to replay a failure; batches sent to a tenant within the
# gather time of each other are queued together, so they can overtake each other.
ORDER_SEED = 1604
GATHER_S = 0.25


@pytest.fixture
def shuffled(shop_stack: StackEndpoints) -> Iterator[dict[str, Any]]:
    with Sandbox.of(shop_stack).shuffled_batches(ORDER_SEED, GATHER_S) as order:
        yield order


def _amount(round_no: int, sale: int) -> int:
    return round_no * 100 + sale


def _lifetime_value(round_no: int) -> float:
    """A customer's lifetime value after ``round_no`` (all its sales are completed)."""
    return sum(_amount(round_no, s) for s in range(SALES_PER_CUSTOMER)) / 100


def _round_of(version: Version) -> int:
    return int(version["data"]["lastName"].removeprefix("v"))


def _change_round(
    dsn: str, round_no: int, customers: dict[int, str], sales: dict[int, list[int]]
) -> None:
    """One SQL transaction per customer: its counter and its sales, in the same instant."""
    order = list(customers)
    random.shuffle(order)
    with psycopg.connect(dsn) as conn:
        for customer in order:
            with conn.transaction():
                conn.execute(
                    "UPDATE customers SET last_name = %s WHERE id = %s",
                    (f"v{round_no:05d}", customer),
                )
                for n, sale in enumerate(sales[customer]):
                    conn.execute(
                        "UPDATE transactions SET amount_cents = %s WHERE id = %s",
                        (_amount(round_no, n), sale),
                    )


def _backward_steps(versions: list[Version], value: Callable[[Version], float]) -> list[str]:
    """Every version older than one applied before it, and why: its batch arrived before the
    newer one's (two unfinished batches of the entity, applied out of arrival order) or after it
    (reach-sync sent an older read later)."""
    steps: list[str] = []
    newest: Version | None = None
    for version in versions:
        if newest is not None and value(version) < value(newest):
            why = (
                "two unfinished batches, applied out of arrival order"
                if version["arrivedAt"] < newest["arrivedAt"]
                else "an older read sent after a newer one"
            )
            steps.append(
                f"{value(newest)} (seq {newest['seq']}) then {value(version)}"
                f" (seq {version['seq']}): {why}"
            )
        else:
            newest = version
    return steps


def _pace() -> None:
    # The workload's own pace (not a wait for a result): rounds spread over several windows, so
    # that triggers keep arriving while earlier windows of the same entities are in flight.
    time.sleep(random.uniform(0.05, 0.3))


def test_versions_never_go_back_across_windows_consumers_and_a_rebalance(
    shop_stack: StackEndpoints, unique: Callable[[str], str], shuffled: dict[str, Any]
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("stale")
    customers: dict[int, str] = {}  # id -> tenant
    sales: dict[int, list[int]] = {}
    for merchant in (1, 2, 3):
        for n in range(CUSTOMERS_PER_MERCHANT):
            customer, tenant = insert_customer(
                dsn, merchant, f"stale-{merchant}-{n}@example.com", last_name="v00000"
            )
            customers[customer] = tenant
            sales[customer] = [
                insert_transaction(dsn, customer, _amount(0, s), "completed")
                for s in range(SALES_PER_CUSTOMER)
            ]

    with contextlib.ExitStack() as stack:
        first = stack.enter_context(pipeline_thread(shop_stack, name))
        caught_up(
            first,
            lambda: all(
                sandbox.current(t, CUSTOMERS_SCHEMA, str(c)) is not None
                for c, t in customers.items()
            ),
        )
        since = sandbox.last_version_seq()
        stack.enter_context(sandbox.faults(*FAULTS))

        round_no = 0
        for _ in range(ROUNDS_BEFORE_JOIN):
            round_no += 1
            _change_round(dsn, round_no, customers, sales)
            _pace()

        # A second pipeline in the same group joins while windows are in flight; the rounds go on
        # until it is working, then some more with both.
        second: LivePipeline = stack.enter_context(pipeline_thread(shop_stack, name))
        joining = time.monotonic()
        while second.counters()["sent"] == 0:
            assert time.monotonic() - joining < JOIN_DEADLINE_S, "the second pipeline never worked"
            second.check_alive()
            round_no += 1
            _change_round(dsn, round_no, customers, sales)
            _pace()
        join_s = time.monotonic() - joining
        first_sent_at_join = first.counters()["sent"]
        for _ in range(ROUNDS_AFTER_JOIN):
            round_no += 1
            _change_round(dsn, round_no, customers, sales)
            _pace()

        differences = converged(first.definition, shop_stack)
        first.check_alive()
        second.check_alive()
        # Both consumers delivered after the join: the rounds crossed consumers.
        assert first.counters()["sent"] > first_sent_at_join
        assert second.counters()["sent"] > 0

    went_back: list[tuple[str, str, list[str]]] = []
    last_rounds: dict[int, list[int]] = {}
    inconsistent: list[tuple[int, Version]] = []
    versions_seen = 0
    for customer, tenant in customers.items():
        versions = sandbox.history(tenant, CUSTOMERS_SCHEMA, str(customer), after_seq=since)
        versions_seen += len(versions)
        if steps := _backward_steps(versions, _round_of):
            went_back.append((CUSTOMERS_SCHEMA, str(customer), steps))
        rounds = [_round_of(v) for v in versions]
        if not rounds or rounds[-1] != round_no:
            last_rounds[customer] = rounds
        # One consistent read: the counter and the sales of the same SQL transaction.
        inconsistent += [
            (customer, v)
            for v in versions
            if v["data"]["lifetimeValue"] != _lifetime_value(_round_of(v))
        ]
        for sale in sales[customer]:
            sale_versions = sandbox.history(tenant, TRANSACTIONS_SCHEMA, str(sale), after_seq=since)
            versions_seen += len(sale_versions)
            if steps := _backward_steps(sale_versions, lambda v: v["data"]["transactionTotal"]):
                went_back.append((TRANSACTIONS_SCHEMA, str(sale), steps))
    reordered = sandbox.reordered(since)
    report = (
        f"batch order {shuffled}: {reordered.batches} batches overtaken by a later one;"
        f" entities written out of arrival order: {sorted(set(reordered.entities))}"
    )
    print(report)
    assert not went_back, (report, went_back)
    assert all(d.equal for d in differences), differences
    assert not last_rounds, last_rounds
    assert not inconsistent, inconsistent
    # Many states were delivered for each entity, so the order had chances to go wrong.
    entities = len(customers) * (1 + SALES_PER_CUSTOMER)
    assert versions_seen >= 3 * entities, versions_seen
    # The join is bounded: the revoked partitions' windows finish (well under a second here),
    # commit, and the newcomer takes over.
    assert join_s < JOIN_BOUND_S, f"the second pipeline took {join_s:.0f} s to start working"
