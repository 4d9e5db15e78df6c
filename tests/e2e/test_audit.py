"""The audit on the whole pipeline: every send of one customer, and nothing else, newest first,
each with the trigger that caused it; `reach-sync audit why` reads it back through the CLI.

One customer changes several times, each change in its own window (the next change is made
only once the previous one reached the sandbox): created, renamed, an unmapped column changed
(recomputed, skipped as unchanged: never audited), a sale added (a transaction's change makes its
customer dirty), renamed again, the sale deleted. Customers go through Reach's batch endpoint
(examples/shop.yaml: ``mode: batch``), so each send has a batch id; the sale is a real-time
resource and alone in its window (at most ``batch_over`` records), so its upsert is a single
write without one, while its delete, like every delete, went through a batch. Every send was
audited ahead (a ``sending`` record, before its request left) and then with its outcome; `audit
why` shows the two as one send, announced before it was accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from reach_devstack.stack import StackEndpoints

from consumer.cli.main import main
from tests.e2e.conftest import EXAMPLE, shop_env
from tests.e2e.helpers import (
    LivePipeline,
    Sandbox,
    caught_up,
    insert_customer,
    insert_transaction,
    pipeline_thread,
    sql,
    wait_for,
    wait_quiet,
)

CUSTOMERS, TRANSACTIONS = "shop_customers", "shop_transactions"
LANDS_S = 60.0


def _why(capsys: pytest.CaptureFixture[str], resource: str, entity_id: int) -> list[dict[str, Any]]:
    """``reach-sync audit why RESOURCE ID --json`` on the pipeline's definition (environment)."""
    capsys.readouterr()
    code = main(["audit", "why", resource, str(entity_id), "--config", str(EXAMPLE), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _cause(record: dict[str, Any]) -> tuple[str, str, str]:
    """The table, op and topic of a record's causes (one change: one of each)."""
    (cause,) = {(c["kind"], c["table"], c["op"], c["topic"]) for c in record["causes"]}
    kind, table, op, topic = cause
    assert kind == "cdc", record["causes"]
    return table, op, topic


def test_why_lists_exactly_the_sends_of_an_entity_with_their_causes(
    shop_stack: StackEndpoints,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("audit")
    for key, value in shop_env(shop_stack, name).items():  # what `audit why` reads
        monkeypatch.setenv(key, value)
    customer, tenant = insert_customer(dsn, 2, "audited@example.com", first_name="Ada")
    external_id = str(customer)

    def versions() -> int:
        return len(sandbox.history(tenant, CUSTOMERS, external_id))

    def change(running: LivePipeline, statement: str, *args: object, sends: int) -> None:
        """Make one change and wait until the customer has ``sends`` versions in the sandbox
        and the pipeline is idle again: the change was one window of its own."""
        sql(dsn, (statement, args))
        wait_for(lambda: versions() >= sends, LANDS_S, statement, guard=running.check_alive)
        wait_quiet(running.counters, quiet_s=1.5, timeout_s=LANDS_S)
        assert versions() == sends, statement

    with pipeline_thread(shop_stack, name) as running:
        caught_up(running, lambda: versions() == 1, timeout_s=120)
        change(
            running, "UPDATE customers SET first_name = 'Grace' WHERE id = %s", customer, sends=2
        )

        # An unmapped column: recomputed, the same projection, skipped; never audited.
        before = running.counters()
        sql(dsn, ("UPDATE customers SET internal_notes = 'vip' WHERE id = %s", (customer,)))
        wait_for(
            lambda: running.counters()["skipped"] > before["skipped"],
            LANDS_S,
            "the unmapped change skipped",
            guard=running.check_alive,
        )
        wait_quiet(running.counters, quiet_s=1.5, timeout_s=LANDS_S)
        after = running.counters()
        assert (after["skipped"] - before["skipped"], after["sent"] - before["sent"]) == (1, 0)
        assert after["audited"] == before["audited"]
        assert after["announced"] == before["announced"]  # nothing left: nothing announced
        assert versions() == 2

        sale = insert_transaction(dsn, customer, 250_000, "completed")
        wait_for(
            lambda: versions() >= 3 and sandbox.history(tenant, TRANSACTIONS, str(sale)),
            LANDS_S,
            "the sale and its customer",
            guard=running.check_alive,
        )
        wait_quiet(running.counters, quiet_s=1.5, timeout_s=LANDS_S)
        change(
            running, "UPDATE customers SET last_name = 'Hopper' WHERE id = %s", customer, sends=4
        )
        change(running, "DELETE FROM transactions WHERE id = %s", sale, sends=5)
        wait_for(
            lambda: sandbox.history(tenant, TRANSACTIONS, str(sale))[-1]["data"] is None,
            LANDS_S,
            "the sale deleted",
            guard=running.check_alive,
        )
        counters = running.counters()

    records = _why(capsys, "customers", customer)
    # Exactly the five sends (the skipped recompute is not one), newest first, each its sending
    # record and its outcome record in one.
    assert len(records) == 5 == versions(), records
    assert [r["at_ms"] for r in records] == sorted((r["at_ms"] for r in records), reverse=True)
    assert [_cause(r) for r in records] == [
        ("public.transactions", "d", "shop.public.transactions"),
        ("public.customers", "u", "shop.public.customers"),
        ("public.transactions", "c", "shop.public.transactions"),
        ("public.customers", "u", "shop.public.customers"),
        ("public.customers", "c", "shop.public.customers"),
    ]
    hashes = [r["payload_sha256"] for r in records]
    assert len(set(hashes)) == 5 and all(hashes), hashes
    for record in records:
        assert (record["kind"], record["outcome"], record["mode"]) == (
            "upsert",
            "accepted",
            "batch",
        )
        assert (record["resource"], record["id"], record["tenant"]) == (
            "customers",
            external_id,
            tenant,
        )
        assert record["batch_id"] and record["reach_schema"] == CUSTOMERS
        announced = record["announced_at_ms"]
        assert announced is not None and announced <= record["at_ms"], record
        assert "email" in record["fields"] and "firstName" in record["fields"]
        # pii: send values are never kept; pii: none values and the groups are.
        assert not {"email", "firstName", "lastName", "phone"} & record["values"].keys()
        assert record["values"]["customerId"] == external_id and "segments" in record["values"]
    assert len({r["batch_id"] for r in records}) == 5
    assert records[2]["values"]["lifetimeValue"] == 2500.0
    assert records[2]["values"]["segments"] == ["high_value"]
    assert records[1]["values"]["lifetimeValue"] == 2500.0
    assert records[0]["values"]["lifetimeValue"] == 0
    # The newest record's hash is the one dedup remembers.
    store = redis.Redis.from_url(shop_stack.redis_url)
    try:
        last = store.get(f"reach-sync:{name}:last:customers:{customer}")
    finally:
        store.close()
    assert last == f"{tenant}\n{hashes[0]}".encode()
    assert counters["audited"] >= 7  # at least this customer's five and the sale's two
    assert counters["announced"] >= 7  # each announced before it left

    # The sale: one single write (no batch), then its delete through a batch.
    deleted, sent = _why(capsys, "transactions", sale)
    assert (sent["kind"], sent["outcome"], sent["mode"], sent["batch_id"]) == (
        "upsert",
        "accepted",
        "realtime",
        None,
    )
    for record in (deleted, sent):
        announced = record["announced_at_ms"]
        assert announced is not None and announced <= record["at_ms"], record
    assert _cause(sent) == ("public.transactions", "c", "shop.public.transactions")
    assert sent["values"]["status"] == "completed" and sent["tenant"] == tenant
    assert (deleted["kind"], deleted["outcome"], deleted["mode"]) == ("delete", "deleted", "batch")
    assert deleted["batch_id"] and deleted["payload_sha256"] is None
    assert _cause(deleted) == ("public.transactions", "d", "shop.public.transactions")
