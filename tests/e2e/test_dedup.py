"""Dedup: unchanged projections are skipped; losing Redis causes a re-send, never a skip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import (
    REJOIN_S,
    PipelineProcess,
    Sandbox,
    delete_keys,
    insert_customer,
    keys_under,
    sql,
    wait_for,
    wait_quiet,
)

SCHEMA = "shop_customers"


def _one_skip(process: PipelineProcess, change: tuple[str, tuple[object, ...]], dsn: str) -> None:
    """Make ``change`` and wait for the syncer's outcome: exactly one dirty key, skipped."""
    before = process.counters()
    sql(dsn, change)
    wait_for(
        lambda: process.counters()["skipped"] > before["skipped"],
        60,
        f"a skip after {change[0]!r}",
        guard=process.check_alive,
    )
    wait_quiet(process.counters, quiet_s=1.0, timeout_s=30)
    after = process.counters()
    delta = {k: after[k] - before[k] for k in before}
    assert (delta["dirty_keys"], delta["skipped"], delta["sent"]) == (1, 1, 0), (change, delta)


def test_unchanged_projections_are_skipped_and_losing_redis_resends(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("dedup")
    prefix = f"reach-sync:{name}"
    customer, tenant = insert_customer(
        dsn, 2, "dedup@example.com", first_name="Dee", internal_notes="created"
    )
    external_id = str(customer)
    # A real process with live counters: the restart below needs the same consumer group, and
    # members of this test process would keep it (they leave without a LeaveGroup, see helpers).
    process = PipelineProcess(shop_stack, name, tmp_path, live_stats=True)
    try:
        process.start()
        wait_for(
            lambda: sandbox.history(tenant, SCHEMA, external_id),
            90,
            "the new customer in the sandbox",
            guard=process.check_alive,
        )
        wait_quiet(process.counters, quiet_s=2.0, timeout_s=60)
        sent = sandbox.history(tenant, SCHEMA, external_id)[-1]

        # An unmapped column, then a no-op UPDATE: each triggers a recompute whose projection is
        # what Reach already has, so each is skipped and Reach gets nothing.
        _one_skip(
            process,
            ("UPDATE customers SET internal_notes = %s WHERE id = %s", ("vip", customer)),
            dsn,
        )
        _one_skip(process, ("UPDATE customers SET email = email WHERE id = %s", (customer,)), dsn)
        assert sandbox.history(tenant, SCHEMA, external_id, after_seq=sent["seq"]) == []
        assert process.terminate() == 0, process.log()

        # Redis loses the keyspace of this definition; the entity is triggered again while the
        # service is down; the service comes back in the same group (from its committed offsets).
        assert delete_keys(shop_stack.redis_url, prefix) > 0
        assert keys_under(shop_stack.redis_url, prefix) == []
        sql(
            dsn,
            ("UPDATE customers SET internal_notes = %s WHERE id = %s", ("vip again", customer)),
        )
        process.start()
        resent = wait_for(
            lambda: sandbox.history(tenant, SCHEMA, external_id, after_seq=sent["seq"]),
            REJOIN_S + 60,
            "the customer re-sent after the restart",
            guard=process.check_alive,
        )
        wait_quiet(process.counters, quiet_s=2.0, timeout_s=30)
        counters = process.counters()

        # Without its last-sent hash the unchanged record is sent again, never skipped...
        assert len(resent) == 1, resent
        assert resent[0]["data"] == sent["data"]
        # ...by the same group, which resumed after the clean stop: only the new trigger.
        assert (counters["dirty_keys"], counters["sent"], counters["skipped"]) == (1, 1, 0), (
            counters
        )
        # The hash is remembered again once Reach accepted the record (beside the definition's
        # fingerprints, which the restart stored again: backfill/fingerprint.py).
        last_sent = [k for k in keys_under(shop_stack.redis_url, prefix) if ":last:" in k]
        assert last_sent == [f"{prefix}:last:customers:{customer}"]
        assert process.terminate() == 0, process.log()
    finally:
        process.ensure_stopped()
