"""Coalescing: a burst of changes to one entity inside one window is one recompute and one send."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import (
    Sandbox,
    caught_up,
    insert_customer,
    pipeline_thread,
    wait_for,
    wait_quiet,
)

SCHEMA = "shop_customers"
UPDATES = 100
# The customers resource's window (examples/shop.yaml, delivery.window_ms).
WINDOW_S = 0.5


def test_a_burst_of_updates_to_one_customer_is_one_recompute_and_one_version(
    shop_stack: StackEndpoints, unique: Callable[[str], str]
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    # A customer of its own, written before the pipeline starts: once it is in the sandbox, the
    # new pipeline has read past it, and nothing else will trigger it.
    customer, tenant = insert_customer(dsn, 1, "burst@example.com", last_name="before")
    external_id = str(customer)

    with pipeline_thread(shop_stack, unique("coalesce")) as running:
        caught_up(running, lambda: bool(sandbox.history(tenant, SCHEMA, external_id)))
        before = sandbox.history(tenant, SCHEMA, external_id)
        requests_before = sandbox.last_request_seq()
        counters_before = running.counters()

        # 100 UPDATEs in one quick burst, each its own transaction (autocommit).
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for n in range(1, UPDATES + 1):
                conn.execute(
                    "UPDATE customers SET last_name = %s WHERE id = %s",
                    (f"burst-{n:03d}", customer),
                )
        burst_s = time.monotonic() - started

        final = f"burst-{UPDATES:03d}"
        wait_for(
            lambda: (sandbox.current(tenant, SCHEMA, external_id) or {}).get("lastName") == final,
            60,
            "the burst's final state in the sandbox",
        )
        # Every trigger of the burst reached the syncer, and its windows are all done.
        wait_for(
            lambda: running.counters()["triggers"] - counters_before["triggers"] >= UPDATES,
            30,
            "the burst's triggers at the syncer",
        )
        wait_quiet(running.counters, quiet_s=2.0, timeout_s=30)
        after = running.counters()
        running.check_alive()

    delta = {k: after[k] - counters_before[k] for k in counters_before}
    versions = sandbox.history(tenant, SCHEMA, external_id, after_seq=before[-1]["seq"])
    posts = [
        r
        for r in sandbox.requests(requests_before, path_prefix=f"/api/resources/{SCHEMA}")
        if r["method"] == "POST"
    ]

    # The system was quiet: these are the burst's own, one trigger per UPDATE (the router merges
    # those of one batch into one dirty key, so there are at most as many keys)...
    assert delta["triggers"] == UPDATES, delta
    assert 1 <= delta["dirty_keys"] <= UPDATES, delta
    # ...coalesced. A window closes WINDOW_S after its first key; the burst's events can reach
    # the syncer in more than one delivery, so a window boundary may split the burst in two
    # (never more: the events arrive well within a window). Hence at most 2 windows and 2
    # recompute queries; 1 is what happens when the burst is not split.
    assert 1 <= delta["recomputes"] <= 2, delta
    assert delta["windows"] == delta["recomputes"], delta
    # A trigger is not data: every recompute reads the database as it is then. The first window
    # can only close WINDOW_S after the first UPDATE committed; a burst shorter than that is
    # complete by then, so even a split burst's second recompute reads the same final state and
    # dedup skips it: exactly one version. (A slower burst could let the first window read an
    # intermediate state: at most 2 versions then.)
    assert delta["sent"] == len(versions), (delta, versions)
    assert delta["skipped"] == delta["recomputes"] - delta["sent"], delta
    if burst_s < WINDOW_S * 0.8:
        assert len(versions) == 1, (burst_s, versions)
    else:
        assert 1 <= len(versions) <= 2, (burst_s, versions)
    assert versions[-1]["data"]["lastName"] == final
    assert all(v["op"] == "upsert" and v["batchId"] for v in versions), versions

    # The request log: one batch POST per version, each carrying one record, and it is the
    # request that wrote the version (the version's arrival is the request's time).
    assert len(posts) == len(versions), posts
    for post, version in zip(posts, versions, strict=True):
        assert post["path"] == f"/api/resources/{SCHEMA}/batch", post
        assert (post["status"], post["records"]) == (202, 1), post
        assert post["at"] == version["arrivedAt"], (post, version)
