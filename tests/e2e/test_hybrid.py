"""The guide's hybrid "real-time API for new records, batch API for updates" on the real stack:
``delivery: {new: realtime, updates: batch}``. A customer Reach does not have goes out alone
through the single-record endpoint; changes to customers Reach has go in batches; Reach ends up
equal to the database either way."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from reach_devstack.stack import StackEndpoints

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.service import ServiceStats, run_service
from tests.e2e.conftest import EXAMPLE, STOP_BOUND_S, shop_env
from tests.e2e.helpers import Sandbox, converged, insert_customer, sql, wait_for, wait_quiet

SCHEMA = "shop_customers"


@contextmanager
def _running(definition: SyncDefinition) -> Iterator[ServiceStats]:
    stop = threading.Event()
    stats = ServiceStats()
    thread = threading.Thread(
        target=run_service, args=(definition, stop), kwargs={"stats": stats}, daemon=True
    )
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(STOP_BOUND_S)
        assert not thread.is_alive(), "the pipeline did not stop within its bound"


def _hybrid(tmp_path: Path, endpoints: StackEndpoints, name: str) -> SyncDefinition:
    shop = EXAMPLE.read_text()
    batch = "    delivery:\n      mode: batch\n      window_ms: 500\n"
    assert batch in shop, "examples/shop.yaml's customers delivery changed"
    path = tmp_path / "hybrid.yaml"
    path.write_text(
        shop.replace(
            batch,
            "    delivery:\n      new: realtime\n      updates: batch\n      window_ms: 500\n",
        )
    )
    definition = load_definition(path, shop_env(endpoints, name))
    assert definition.resources["customers"].delivery.new == "realtime"
    return definition


def _customers_of(dsn: str, tenant: str, count: int) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.id FROM customers c JOIN merchants m ON m.id = c.merchant_id"
            " WHERE m.external_id = %s AND c.id < 900000 ORDER BY c.id LIMIT %s",
            (tenant, count),
        ).fetchall()
    return [int(row[0]) for row in rows]


def test_a_new_customer_goes_alone_at_once_and_updates_go_in_batches(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    definition = _hybrid(tmp_path, shop_stack, unique("hybrid"))
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    with _running(definition) as stats:
        assert all(d.equal for d in converged(definition, shop_stack))
        # The sandbox may equal the database before this pipeline read the source topics'
        # history (earlier tests' pipelines sent it); until it has, every entity is new to its
        # own last-sent store. So: the router caught up with the topics and the syncer idle.
        wait_for(
            lambda: stats.router is not None and stats.router.events > 0,
            timeout_s=60,
            what="the router to read the source topics",
        )
        wait_quiet(
            lambda: (
                stats.router.events if stats.router else 0,
                stats.syncer.dirty_keys,
                stats.syncer.sent,
                stats.syncer.skipped,
            ),
            quiet_s=3.0,
            timeout_s=120,
        )
        seq = sandbox.last_version_seq()

        created, tenant = insert_customer(dsn, 1, f"{unique('new')}@example.com")
        known = _customers_of(dsn, tenant, 3)
        sql(
            dsn,
            (
                "UPDATE customers SET first_name = 'Hybrid' WHERE id = ANY(%s)",
                (known,),
            ),
        )
        wait_for(
            lambda: all(
                sandbox.history(tenant, SCHEMA, str(i), after_seq=seq) for i in (created, *known)
            ),
            timeout_s=60,
            what="the new customer and the updates in Reach",
        )
        differences = converged(definition, shop_stack)
        assert all(d.equal for d in differences), differences

    (new_version,) = sandbox.history(tenant, SCHEMA, str(created), after_seq=seq)
    assert new_version["batchId"] is None, "a new customer must go through the single endpoint"
    for customer in known:
        versions = sandbox.history(tenant, SCHEMA, str(customer), after_seq=seq)
        assert versions and all(v["batchId"] is not None for v in versions), (customer, versions)
        assert versions[-1]["data"]["firstName"] == "Hybrid"
