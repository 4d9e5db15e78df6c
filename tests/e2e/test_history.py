"""History on the real stack: backfill into an empty Reach, onboarding a tenant, re-sync.

The stack here streams changes only (Debezium ``snapshot.mode: no_data``), as a partner's
connector does once its snapshot is long past: history reaches Reach through
``reach-sync backfill`` alone. Each test starts from an empty sandbox and its own consumer
group, topics and Redis prefix.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from reach_devstack.stack import DEV_TENANTS, LocalStack, StackEndpoints, StackOptions
from redis.asyncio import Redis

from consumer.backfill.checkpoint import Checkpoint, CheckpointStore
from consumer.backfill.scope import BackfillScope
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.service import Role, ServiceStats, run_service
from tests.e2e.conftest import EXAMPLE, STOP_BOUND_S, TENANTS, shop_env
from tests.e2e.helpers import Sandbox, converged, sql, wait_for

# Reach's own tenant id of each tenant the shop sends to (the sandbox's admin API uses it).
REACH_IDS = {external: reach_id for reach_id, external in DEV_TENANTS}
CUSTOMERS = 600
TRANSACTIONS = 1500
BACKFILL_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def history_stack(state_root: Path) -> Iterator[StackEndpoints]:
    stack = LocalStack(
        StackOptions(
            state_dir=state_root / "history-stack",
            seed_customers=CUSTOMERS,
            seed_transactions=TRANSACTIONS,
            snapshot_mode="no_data",
        )
    )
    endpoints = stack.start()
    try:
        yield endpoints
    finally:
        stack.stop()


def _env(endpoints: StackEndpoints, name: str, prefix: str | None = None) -> dict[str, str]:
    env = shop_env(endpoints, name)
    if prefix is not None:
        env["REACH_SYNC_REDIS_PREFIX"] = prefix
    return env


@contextmanager
def _running(definition: SyncDefinition, role: Role = "all") -> Iterator[ServiceStats]:
    """reach-sync in a thread until the block ends."""
    stop = threading.Event()
    stats = ServiceStats()
    thread = threading.Thread(
        target=run_service,
        args=(definition, stop),
        kwargs={"stats": stats, "role": role},
        daemon=True,
    )
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join(STOP_BOUND_S)
        assert not thread.is_alive(), "the pipeline did not stop within its bound"


def _cli(env: dict[str, str], *args: str, config: Path = EXAMPLE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli.main", *args, "--config", str(config)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=BACKFILL_TIMEOUT_S)
    assert process.returncode == 0, (process.returncode, out, err)
    return out


def _checkpoint(definition: SyncDefinition, scope: BackfillScope) -> Checkpoint | None:
    async def load() -> Checkpoint | None:
        redis: Redis = Redis.from_url(definition.redis.url.get_secret_value())
        try:
            return await CheckpointStore(redis, definition.redis.key_prefix).load(scope.id)
        finally:
            await redis.aclose()

    return asyncio.run(load())


def _reset(endpoints: StackEndpoints) -> Sandbox:
    sandbox = Sandbox.of(endpoints)
    sandbox.reset()
    return sandbox


def _live_changes(dsn: str, stop: threading.Event, made: list[int]) -> None:
    """New customers and changed sales, a few a second, until ``stop``."""
    n = 0
    while not stop.is_set():
        n += 1
        customer = 700_000 + n
        sql(
            dsn,
            (
                "INSERT INTO customers (id, merchant_id, email) VALUES (%s, %s, %s)",
                (customer, 1 + n % 3, f"live{n}@example.com"),
            ),
            (
                "UPDATE transactions SET status = 'completed' WHERE id = %s",
                (1 + (n * 7) % TRANSACTIONS,),
            ),
        )
        made.append(customer)
        stop.wait(0.2)


def test_a_backfill_killed_midway_resumes_and_reach_equals_the_database_while_changes_go_on(
    history_stack: StackEndpoints, unique: Callable[[str], str]
) -> None:
    sandbox = _reset(history_stack)
    name = unique("history")
    env = _env(history_stack, name)
    definition = load_definition(EXAMPLE, env)
    scope = BackfillScope.of(definition, "backfill")
    total = CUSTOMERS + TRANSACTIONS
    with _running(definition):
        # Changes only: nothing of the seeded history reaches Reach by itself.
        time.sleep(3.0)
        assert sum(sandbox.stored(t, "shop_customers") for t in REACH_IDS.values()) == 0
        stop_live, made = threading.Event(), list[int]()
        live = threading.Thread(
            target=_live_changes, args=(history_stack.postgres_dsn, stop_live, made)
        )
        live.start()
        try:
            first = _cli(env, "backfill", "--page-size", "100", "--rate", "300", "--no-wait")
            wait_for(
                lambda: (c := _checkpoint(definition, scope)) is not None and c.keys >= total // 2,
                timeout_s=60,
                what="the backfill to get halfway",
            )
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=10)
            killed_at = _checkpoint(definition, scope)
            assert killed_at is not None and killed_at.completed_ms is None
            assert total // 2 <= killed_at.keys < total

            out = _finish(_cli(env, "backfill", "--page-size", "100"))
        finally:
            stop_live.set()
            live.join(30)
        done = _checkpoint(definition, scope)
        assert done is not None and done.completed_ms is not None
        # Resumed, not started over: the second run made only what the first had not (and the
        # page it was in when killed, at most, again).
        by_second = int(out.split("; ")[-1].split(" by this run")[0].replace(",", ""))
        assert 0 < by_second <= total - killed_at.keys + 100, out
        assert len(done.runs) == 2
        assert "outcomes:" in out and "0 dead-lettered" in out, out
        assert made, "no live change was made during the backfill"

        differences = converged(definition, history_stack)
        assert all(d.equal for d in differences), differences
        checked = {d.resource: d.checked for d in differences}
        assert checked["customers"] >= CUSTOMERS + len(made)
        assert checked["transactions"] >= TRANSACTIONS


def test_a_tenant_backfill_sends_only_that_tenant_and_marks_it_complete_after_the_last_send(
    history_stack: StackEndpoints, unique: Callable[[str], str]
) -> None:
    sandbox = _reset(history_stack)
    name = unique("onboard")
    env = _env(history_stack, name)
    definition = load_definition(EXAMPLE, env)
    dry = _finish(_cli(env, "backfill", "--tenant", "merchant-2", "--dry-run"))
    customers, sales = _counted(history_stack.postgres_dsn, "merchant-2")
    assert f"customers: {customers:,} entities" in dry and f"merchant-2: {customers:,}" in dry
    assert f"transactions: {sales:,} entities" in dry and f"merchant-2: {sales:,}" in dry
    assert "merchant-1" not in dry, dry
    # The syncer alone: the other tests' changes, still in the source topics, are not routed,
    # so everything sent here is the backfill's.
    with _running(definition, role="syncer"):
        out = _finish(_cli(env, "backfill", "--tenant", "merchant-2", "--mark-complete"))
    assert "tenant merchant-2: dataIntegrationCompletedAt" in out, out

    for schema in ("shop_customers", "shop_transactions"):
        assert sandbox.stored(REACH_IDS["merchant-2"], schema) > 0
        assert sandbox.stored(REACH_IDS["merchant-1"], schema) == 0
        assert sandbox.stored(REACH_IDS["merchant-3"], schema) == 0
    requests = sandbox.requests()
    patches = [r for r in requests if r["method"] == "PATCH" and "/partner/tenants/" in r["path"]]
    assert len(patches) == 1, patches
    assert patches[0]["path"].endswith(REACH_IDS["merchant-2"])
    sends = [
        r
        for r in requests
        if r["path"].startswith("/api/") and r["tenantId"] == REACH_IDS["merchant-2"]
    ]
    assert sends, "nothing was sent for merchant-2"
    # The flag is set after every send of the tenant's entities was answered, not before.
    assert max(r["seq"] for r in sends) < patches[0]["seq"]

    tenants = _partner_tenants(history_stack)
    assert tenants["merchant-2"] is not None
    assert tenants["merchant-1"] is None and tenants["merchant-3"] is None


def _counted(dsn: str, tenant: str) -> tuple[int, int]:
    """The tenant's customers and sales, counted in the database."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM customers c JOIN merchants m ON m.id = c.merchant_id"
            "         WHERE m.external_id = %(t)s),"
            "       (SELECT count(*) FROM transactions t JOIN merchants m ON m.id = t.merchant_id"
            "         WHERE m.external_id = %(t)s)",
            {"t": tenant},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _partner_tenants(endpoints: StackEndpoints) -> dict[str, str | None]:
    """Each tenant's dataIntegrationCompletedAt as Reach lists it."""
    definition = load_definition(EXAMPLE, _env(endpoints, "tenants"))

    async def listed() -> dict[str, str | None]:
        from consumer.reach.client import ReachClient

        async with ReachClient(definition.destination) as client:
            found = {}
            for tenant in TENANTS:
                info = await client.find_tenant(tenant)
                assert info is not None
                found[tenant] = info.data_integration_completed_at
            return found

    return asyncio.run(listed())


def test_a_changed_mapping_or_group_rule_resyncs_exactly_that_resource_on_restart(
    history_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    sandbox = _reset(history_stack)
    prefix = f"reach-sync:{unique('resync')}"
    shop = EXAMPLE.read_text()
    without_created = tmp_path / "before.yaml"
    without_created.write_text(
        shop.replace("      createdAt: {column: created_at, format: datetime}\n", "")
    )
    with_created = tmp_path / "with-field.yaml"
    with_created.write_text(shop)
    lower_bar = tmp_path / "with-rule.yaml"
    lower_bar.write_text(
        shop.replace("lifetime_value_cents >= 100000", "lifetime_value_cents >= 20000")
    )
    assert without_created.read_text() != shop and lower_bar.read_text() != shop

    # The history as the first definition projects it.
    env = _env(history_stack, unique("resync1"), prefix)
    before = load_definition(without_created, env)
    with _running(before):
        _finish(_cli(env, "backfill", config=without_created))
        assert all(d.equal for d in converged(before, history_stack))
    transactions_seq = sandbox.last_version_seq()

    # A new mapped field: on restart, every customer is sent again, with it.
    env = _env(history_stack, unique("resync2"), prefix)
    added = load_definition(with_created, env)
    with _running(added) as stats:
        differences = converged(added, history_stack)
        assert all(d.equal for d in differences), differences
        wait_for(lambda: stats.syncer.sent >= CUSTOMERS, timeout_s=60, what="customers re-sent")
    customers = sandbox.versions_after(transactions_seq, "shop_customers")
    assert len(customers) >= CUSTOMERS
    assert all("createdAt" in v["data"] for v in customers if v["data"] is not None)
    assert sandbox.versions_after(transactions_seq, "shop_transactions") == []

    # A changed group rule: only customers whose membership moved are sent again.
    seq = sandbox.last_version_seq()
    env = _env(history_stack, unique("resync3"), prefix)
    rule = load_definition(lower_bar, env)
    with _running(rule):
        differences = converged(rule, history_stack)
        assert all(d.equal for d in differences), differences
    moved = sandbox.versions_after(seq, "shop_customers")
    assert 0 < len(moved) < CUSTOMERS
    assert all("high_value" in v["data"]["segments"] for v in moved)
    assert sandbox.versions_after(seq, "shop_transactions") == []
