"""A source row the driver cannot load stalls nothing: its entity alone is dead-lettered with the
real error, the other entities of its dirty-topic partition land, and once the row is fixed,
``dlq replay`` lands it.

The bad value is ``'infinity'`` in ``customers.created_at``: Postgres stores it, Debezium passes
the change on, but psycopg cannot load it into a Python datetime ("timestamp too large (after
year 10K)"). It is mapped (``createdAt``), so the recompute query reads it.

As in test_invalid_record, the fix must land through the replay alone: the first run is stopped
before the row is fixed, and after the replay only a syncer (same consumer group) runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from reach_devstack.stack import StackEndpoints

from consumer.cli.main import main
from consumer.records.dlq_read import Filter
from consumer.router.dirty import dirty_message_key
from tests.e2e.conftest import EXAMPLE, shop_env
from tests.e2e.helpers import (
    REJOIN_S,
    PipelineProcess,
    Sandbox,
    SyncerProcess,
    assert_converged,
    dead_letters_matching,
    dirty_partition_of,
    insert_customer,
    sql,
    wait_for,
    wait_quiet,
)

SCHEMA = "shop_customers"
COUNT = 40  # customers written in one transaction, one of them unloadable
BAD_INDEX = 17
NEIGHBOURS = 3  # later changes on the unloadable entity's dirty-topic partition
LAND_S = 90.0


def _insert_customers(dsn: str, run_id: str) -> list[tuple[int, str, bool]]:
    """COUNT customers of the three merchants in turn in one transaction; (id, tenant, bad)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        merchants = conn.execute("SELECT id, external_id FROM merchants ORDER BY id").fetchall()
        tenant_of = {int(m[0]): str(m[1]) for m in merchants}
        owners = [int(merchants[i % len(merchants)][0]) for i in range(COUNT)]
        created = ["infinity" if i == BAD_INDEX else "2026-01-02T03:04:05Z" for i in range(COUNT)]
        rows = conn.execute(
            "INSERT INTO customers (merchant_id, email, last_name, created_at)"
            " SELECT m, 'unloadable-' || %s || '-' || n || '@example.com', %s, c"
            " FROM unnest(%s::bigint[], %s::timestamptz[]) WITH ORDINALITY AS u(m, c, n)"
            " ORDER BY n RETURNING id, merchant_id, created_at = 'infinity'",
            (run_id, f"unloadable-{run_id}", owners, created),
        ).fetchall()
    return [(int(r[0]), tenant_of[int(r[1])], bool(r[2])) for r in rows]


def test_an_unloadable_row_is_dead_lettered_alone_and_lands_after_fix_and_replay(
    shop_stack: StackEndpoints,
    unique: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("unloadable")
    run_id = uuid.uuid4().hex[:8]
    env = shop_env(shop_stack, name)
    for variable, value in env.items():  # what `reach-sync dlq ...` reads the definition with
        monkeypatch.setenv(variable, value)
    first = PipelineProcess(shop_stack, name, tmp_path, live_stats=True)
    definition = first.definition
    syncer_log = tmp_path / f"{name}.syncer.log"
    syncer = SyncerProcess(name, env, syncer_log)
    customers: list[tuple[int, str, bool]] = []
    try:
        marker, marker_tenant = insert_customer(dsn, 2, f"marker-{run_id}@example.com")
        first.start()
        wait_for(
            lambda: sandbox.history(marker_tenant, SCHEMA, str(marker)),
            90,
            "the pipeline to catch up",
            guard=first.check_alive,
        )
        wait_quiet(first.counters, quiet_s=2.0, timeout_s=90)
        before = first.counters()

        customers = _insert_customers(dsn, run_id)
        bad_id, bad_tenant, _ = next(c for c in customers if c[2])
        good = [c for c in customers if not c[2]]
        external_id = str(bad_id)

        # Every other customer of that transaction lands, those of the bad one's partition too.
        wait_for(
            lambda: all(sandbox.current(t, SCHEMA, str(i)) for i, t, _ in good),
            LAND_S,
            f"the {len(good)} loadable customers in the sandbox",
            guard=first.check_alive,
        )
        # Later changes on that partition land as well: it is not stalled.
        partition, neighbours = dirty_partition_of(
            shop_stack.bootstrap_servers,
            definition.topics.dirty,
            {dirty_message_key("customers", c[0]) for c in customers},
            dirty_message_key("customers", bad_id),
        )
        assert neighbours, (partition, customers)
        later = [int(k.decode().split("/")[1]) for k in neighbours[:NEIGHBOURS]]
        tenants = {c[0]: c[1] for c in customers}
        sql(
            dsn,
            *(
                ("UPDATE customers SET first_name = %s WHERE id = %s", (f"later-{run_id}", c))
                for c in later
            ),
        )
        wait_for(
            lambda: all(
                (sandbox.current(tenants[c], SCHEMA, str(c)) or {}).get("firstName")
                == f"later-{run_id}"
                for c in later
            ),
            60,
            f"customers {later} (dirty-topic partition {partition}) updated in the sandbox",
            guard=first.check_alive,
        )
        assert sandbox.current(bad_tenant, SCHEMA, external_id) is None

        # One dead letter, for that entity, with the driver's real error and the field.
        letters = wait_for(
            lambda: dead_letters_matching(definition, Filter(kind="record")), 60, "the dead letter"
        )
        assert len(letters) == 1, letters
        letter = letters[0]
        assert (letter.resource, str(letter.entity_id)) == ("customers", external_id), letter
        assert "after year 10K" in letter.reason, letter
        assert "createdAt" in letter.reason and "created_at" in letter.reason, letter
        assert "None" not in letter.reason, letter
        wait_quiet(first.counters, quiet_s=2.0, timeout_s=60)
        during = {k: v - before.get(k, 0) for k, v in first.counters().items()}
        assert during["dead_lettered"] == 1, during
        # Everything else equals the projection (the unloadable row has none).
        assert_converged(definition, shop_stack)
        assert first.terminate() == 0, first.log()[-4000:]

        # Fix the row; only a syncer runs from here on: the fix's change event is never routed.
        sql(dsn, ("UPDATE customers SET created_at = now() WHERE id = %s", (bad_id,)))
        capsys.readouterr()
        argv = ["dlq", "replay", "--config", str(EXAMPLE), "--resource", "customers"]
        code = main([*argv, "--id", external_id])
        out, err = capsys.readouterr()
        assert code == 0, (code, out, err)
        assert "re-enqueued 1 dirty key" in out, out

        syncer.process.start()
        wait_for(
            lambda: sandbox.current(bad_tenant, SCHEMA, external_id),
            REJOIN_S + 90,
            "the fixed customer in the sandbox after the replay",
            guard=syncer.check_alive,
        )
        counters = syncer.terminate()
        assert (counters["dirty_keys"], counters["sent"], counters["dead_lettered"]) == (
            1,
            1,
            0,
        ), counters
        assert_converged(definition, shop_stack)
    finally:
        first.ensure_stopped()
        syncer.process.stop(grace_s=90)
        if customers:  # never leave an unloadable row to the tests that come after
            sql(
                dsn,
                (
                    "UPDATE customers SET created_at = now()"
                    " WHERE last_name = %s AND created_at = 'infinity'",
                    (f"unloadable-{run_id}",),
                ),
            )
