"""The chaos checks on real servers: the row log on Postgres, the history check on the sandbox,
the audit check on the broker.

The row log must give each row's changes in commit order, whoever started first, under
contention; and keep deletes. The history and audit checks are fed a known story: records
sent to the sandbox through its public API in a chosen order (one entity forward, one going
back, one state that was rolled back in the database), and audit records written for all but
one of those sends; each check must say exactly that. Records are made as reach-sync makes them:
the definition's query, then ``project``; audit records by ``upsert_record``/``delete_record``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from psycopg.rows import dict_row
from reach_devstack.chaos.checks import (
    backward_versions,
    read_history,
    unaudited_versions,
    unmapped_values,
)
from reach_devstack.chaos.rowlog import (
    Unloadable,
    install_row_log,
    logged_states,
    source_changes,
)
from reach_devstack.demo import DEFINITION
from reach_devstack.postgres import PostgresConfig
from reach_devstack.shop import seed
from reach_devstack.stack import with_shop_schemas
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxServer,
    running_sandbox,
    sandbox_config,
)

from consumer.config import Resource, SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import BadRecord
from consumer.records.audit import (
    AuditRecord,
    delete_record,
    encode_audit,
    ensure_audit_topic,
    upsert_record,
)
from consumer.sink.outcomes import Removed, Sent
from consumer.sink.projection import Projected, project

TENANTS = ["merchant-1", "merchant-2", "merchant-3"]
CUSTOMERS = "shop_customers"
WORKERS, BUMPS = 4, 30


def _rows(dsn: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def _sql(dsn: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement, args in statements:
            conn.execute(statement, args)


@pytest.fixture
def shop(database: PostgresConfig) -> str:
    """A small seeded shop with the row log installed; its DSN."""
    seed(database.dsn, merchants=3, customers=6, transactions=4, rng_seed=5)
    install_row_log(database.dsn)
    return database.dsn


# --- the row log ---------------------------------------------------------------------------------


def test_install_logs_every_row_once_and_counts_no_change(shop: str) -> None:
    counts = dict(_rows(shop, "SELECT tbl, count(*) FROM chaos.row_log WHERE op = 'S' GROUP BY 1"))
    assert counts == {"public.customers": 6, "public.transactions": 4}
    assert source_changes(shop) == 0
    # Outside schema public, and nothing logged for a table not asked for.
    assert _rows(shop, "SELECT to_regclass('public.row_log')") == [(None,)]
    _sql(shop, ("UPDATE merchants SET name = 'x' WHERE id = 1", ()))
    assert source_changes(shop) == 0


def _waiting_on_a_lock(dsn: str, pid: int) -> bool:
    found = _rows(dsn, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", pid)
    return bool(found) and found[0][0] == "Lock"


def test_a_rows_log_order_is_its_commit_order_not_its_start_order(shop: str) -> None:
    with psycopg.connect(shop) as first, psycopg.connect(shop) as second:
        # The second writer's transaction starts first (it has the older transaction id)...
        second_xid = second.execute("SELECT pg_current_xact_id()::text").fetchone()
        first.execute("UPDATE customers SET last_name = 'first' WHERE id = 1")
        second_pid = second.info.backend_pid
        # ...but waits for the first writer's row lock, which is held until its commit.
        blocked = threading.Thread(
            target=second.execute,
            args=("UPDATE customers SET last_name = 'second' WHERE id = 1",),
        )
        blocked.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(shop, second_pid):
            assert time.monotonic() < deadline, "the second writer never waited for the lock"
            time.sleep(0.01)
        first.commit()
        blocked.join(10)
        assert not blocked.is_alive()
        second.commit()
    states = logged_states(shop, "public.customers")["1"]
    assert [(s.op, s.row["last_name"] if s.row else None) for s in states[1:]] == [
        ("U", "first"),
        ("U", "second"),
    ]
    xids = _rows(
        shop,
        "SELECT xid::text FROM chaos.row_log WHERE tbl = 'public.customers' AND id = '1'"
        " AND op = 'U' ORDER BY seq",
    )
    assert second_xid is not None
    assert [x[0] for x in xids][1] == second_xid[0]  # seq order is not transaction-id order
    assert int(xids[0][0]) > int(xids[1][0])


def test_under_contention_the_log_holds_each_commit_of_a_row_in_order(shop: str) -> None:
    """Each update adds one to a counter in the row itself, so the committed values are the
    commit order; the log must list them 1, 2, 3... Another row changes meanwhile."""
    _sql(shop, ("UPDATE customers SET last_name = '0' WHERE id = 2", ()))
    errors: list[BaseException] = []

    def bump(worker: int) -> None:
        try:
            with psycopg.connect(shop) as conn:
                for n in range(BUMPS):
                    conn.execute(
                        "UPDATE customers SET last_name = (last_name::int + 1)::text WHERE id = 2"
                    )
                    conn.execute(
                        "UPDATE customers SET first_name = %s WHERE id = 3", (f"w{worker}-{n}",)
                    )
                    time.sleep(0.001 * (n % 3))  # hold the lock a little, now and then
                    conn.commit()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    states = logged_states(shop, "public.customers")["2"]
    counters = [int(s.row["last_name"]) for s in states if s.row is not None and s.op == "U"]
    assert counters == list(range(WORKERS * BUMPS + 1))
    assert source_changes(shop) == 1 + 2 * WORKERS * BUMPS


def test_deletes_are_logged_and_the_log_survives_a_second_install(shop: str) -> None:
    sales = _rows(shop, "SELECT id::text FROM transactions WHERE customer_id = 4")
    _sql(
        shop,
        ("UPDATE customers SET internal_notes = 'called about delivery' WHERE id = 4", ()),
        ("UPDATE customers SET internal_notes = 'VIP' WHERE id = 4", ()),
        ("DELETE FROM transactions WHERE customer_id = 4", ()),
        ("DELETE FROM customers WHERE id = 4", ()),
    )
    install_row_log(shop)  # again: the log is kept, the triggers replaced (not doubled)
    _sql(
        shop,
        ("INSERT INTO customers (id, merchant_id, email) VALUES (4, 1, 'back@example.com')", ()),
    )
    with psycopg.connect(shop) as conn:  # two changes in one transaction: one state
        conn.execute("UPDATE customers SET first_name = 'x' WHERE id = 5")
        conn.execute("UPDATE customers SET first_name = 'y' WHERE id = 5")
    customers = logged_states(shop, "public.customers")
    ops = [(s.op, None if s.row is None else s.row["email"]) for s in customers["4"]]
    assert [op for op, _ in ops] == ["S", "U", "U", "D", "I"]
    assert ops[-1] == ("I", "back@example.com") and customers["4"][3].row is None
    assert [s.op for s in customers["5"]] == ["S", "S", "U"]  # the reinstall's snapshot, then y
    assert customers["5"][-1].row is not None and customers["5"][-1].row["first_name"] == "y"
    transactions = logged_states(shop, "public.transactions")
    assert [[s.op for s in transactions[sale]] for (sale,) in sales] == [["S", "D"]] * len(sales)
    # Every change counts, both of one transaction's too (Debezium emits each).
    assert source_changes(shop) == 6 + len(sales)
    # The note overwritten since is still found; the short one is left out.
    notes = unmapped_values(shop)
    assert "called about delivery" in notes and "VIP" not in notes


def test_a_value_the_driver_cannot_load_is_logged_and_cannot_be_projected(shop: str) -> None:
    """The chaos run's bad rows (an ``infinity`` timestamp): reach-sync dead-letters them; the
    log keeps them, with that value unloadable, so the checks read on."""
    _sql(shop, ("UPDATE customers SET created_at = 'infinity' WHERE id = 6", ()))
    last = logged_states(shop, "public.customers")["6"][-1]
    assert last.row is not None and isinstance(last.row["created_at"], Unloadable)
    assert last.row["id"] == 6 and last.row["email"]
    customers = _definition(shop, "http://127.0.0.1:9", "127.0.0.1:9", "a").resources["customers"]
    with pytest.raises(BadRecord, match="createdAt"):
        project(customers, {**last.row, "tenant": "merchant-1"})


# --- the history and audit checks on a known story ----------------------------------------------


@pytest.fixture
def story_shop(database: PostgresConfig) -> str:
    """Six customers and no sales, with the row log installed; its DSN."""
    seed(database.dsn, merchants=3, customers=6, transactions=0, rng_seed=5)
    install_row_log(database.dsn)
    return database.dsn


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path / "sandbox", with_shop_schemas(sandbox_config())) as server:
        yield server


def _definition(dsn: str, reach_url: str, bootstrap: str, audit_topic: str) -> SyncDefinition:
    return load_definition(
        DEFINITION,
        {
            "REACH_SYNC_BOOTSTRAP_SERVERS": bootstrap,
            "REACH_SYNC_DATABASE_URL": dsn,
            "REACH_SYNC_REACH_URL": reach_url,
            "REACH_SYNC_PARTNER_ID": PARTNER_ID,
            "REACH_SYNC_JWT_SECRET": PARTNER_SECRET,
            "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:9/0",
            "REACH_SYNC_AUDIT_TOPIC": audit_topic,
        },
    )


def _projected(conn: psycopg.Connection[Any], resource: Resource, entity_id: int) -> Projected:
    """What reach-sync would send for the entity as ``conn`` sees it: the definition's query,
    then the projection (group columns left out: no group rule is true)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(resource.query, {"ids": [entity_id]})
        row = cur.fetchone()
    assert row is not None
    return project(resource, row)


@dataclass
class Story:
    """What was sent, in order, and the audit record each send would have."""

    definition: SyncDefinition
    audit: list[AuditRecord] = field(default_factory=list)
    unaudited_send: AuditRecord | None = None


def _single(sandbox: SandboxServer, item: Projected) -> None:
    with sandbox.client(item.tenant) as api:
        api.post(
            f"/api/resources/{CUSTOMERS}",
            params={"onconflict": "upsert"},
            content=orjson.dumps({"data": item.record}),
            headers={"content-type": "application/json"},
        ).raise_for_status()


def _batch(sandbox: SandboxServer, tenant: str, method: str, body: dict[str, Any]) -> str:
    with sandbox.client(tenant) as api:
        response = api.request(
            method,
            f"/api/resources/{CUSTOMERS}/batch",
            content=orjson.dumps(body),
            headers={"content-type": "application/json"},
        )
    batch_id: str = response.raise_for_status().json()["data"]["batchId"]
    assert sandbox.wait_batch(tenant, batch_id)["status"] == "success"
    return batch_id


def _tell(dsn: str, sandbox: SandboxServer, definition: SyncDefinition) -> Story:
    """Customers 1..6 sent as they are; then 1 forward (B by a batch, then C), 2 backward (C
    then B), 3 a state that was rolled back, 4 deleted by a batch; 5 and 6 unchanged."""
    resource = definition.resources["customers"]
    story = Story(definition)

    def single(item: Projected, audited: bool = True) -> None:
        _single(sandbox, item)
        record = upsert_record("customers", resource, "h", Sent(item, int(time.time() * 1000)))
        if audited:
            story.audit.append(record)
        else:
            story.unaudited_send = record

    def update(entity: int, value: str) -> Projected:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE customers SET first_name = %s WHERE id = %s", (value, entity))
            return _projected(conn, resource, entity)

    with psycopg.connect(dsn, autocommit=True) as conn:
        for entity in range(1, 7):
            single(_projected(conn, resource, entity))
    one_b = update(1, "One-B")
    batch = _batch(sandbox, one_b.tenant, "POST", {"resources": [one_b.record]})
    story.audit.append(upsert_record("customers", resource, "h", Sent(one_b, 1, batch)))
    single(update(1, "One-C"))
    two_b, two_c = update(2, "Two-B"), update(2, "Two-C")
    single(two_c)
    single(two_b)  # goes back
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE customers SET first_name = 'Never' WHERE id = 3")
        never = _projected(conn, resource, 3)
        conn.rollback()
    single(never, audited=False)  # a state nobody committed, sent and not audited
    with psycopg.connect(dsn, autocommit=True) as conn:
        tenant = _projected(conn, resource, 4).tenant
        conn.execute("DELETE FROM customers WHERE id = 4")
    deleted = _batch(sandbox, tenant, "DELETE", {"externalIds": ["4"], "cascade": False})
    removed = Removed(tenant, "4", 1, deleted)
    story.audit.append(delete_record("customers", resource, "h", removed))
    return story


def _seqs(sandbox: SandboxServer, entity: str) -> list[int]:
    history = read_history(sandbox.base_url, sandbox.admin_token)
    return [v.seq for v in history.versions if v.external_id == entity and v.schema == CUSTOMERS]


def test_backward_versions_finds_the_version_that_went_back_and_the_one_never_committed(
    story_shop: str, sandbox: SandboxServer
) -> None:
    shop = story_shop
    definition = _definition(shop, sandbox.base_url, "127.0.0.1:9", "unused.audit")
    _tell(shop, sandbox, definition)
    report = backward_versions(shop, definition, sandbox.base_url, sandbox.admin_token, TENANTS)

    assert (report.versions_checked, report.entities_checked) == (12, 6)
    (back,) = report.backward
    seqs = _seqs(sandbox, "2")
    assert (back.external_id, back.version_seq, back.previous_version_seq) == (
        "2",
        seqs[2],
        seqs[1],
    )
    (never,) = report.never_existed
    assert (never.external_id, never.version_seq) == ("3", _seqs(sandbox, "3")[-1])
    assert {(u.external_id, u.reason) for u in report.unconverged} == {
        ("2", "the last version is not the row's last state"),
        ("3", "the last version is not the row's last state"),
    }
    # Judged only after since_seq (the six first sends): customers 5 and 6 are not judged.
    later = backward_versions(
        shop, definition, sandbox.base_url, sandbox.admin_token, TENANTS, since_seq=6
    )
    assert (later.versions_checked, later.entities_checked) == (6, 4)
    assert (len(later.backward), len(later.never_existed)) == (1, 1)


def test_unaudited_versions_finds_the_send_without_an_audit_record(
    story_shop: str, sandbox: SandboxServer, broker: str, unique: Callable[[str], str]
) -> None:
    shop = story_shop
    definition = _definition(shop, sandbox.base_url, broker, unique("chaos") + ".audit")
    story = _tell(shop, sandbox, definition)
    ensure_audit_topic(definition)
    producer = Producer({"bootstrap.servers": broker})
    for record in story.audit:
        producer.produce(definition.topics.audit, encode_audit(record), key=record.id.encode())
    producer.produce(definition.topics.audit, b"not an audit record", key=b"x")
    assert producer.flush(30) == 0

    report = unaudited_versions(
        definition, sandbox.base_url, sandbox.admin_token, TENANTS, broker, reread_after_s=0
    )
    assert (report.versions_checked, report.audit_records, report.undecodable) == (12, 11, 1)
    assert (report.by_batch, report.by_single_write, report.deletes) == (2, 9, 1)
    (missing,) = report.unaudited
    assert report.states_never_audited == [missing]
    assert (missing.external_id, missing.seq, missing.request_id is not None) == (
        "3",
        _seqs(sandbox, "3")[-1],
        True,
    )
    assert not missing.same_state_audited and not report.audited_not_applied

    # Audited after all: nothing is missing.
    assert story.unaudited_send is not None
    producer.produce(definition.topics.audit, encode_audit(story.unaudited_send), key=b"3")
    assert producer.flush(30) == 0
    report = unaudited_versions(
        definition, sandbox.base_url, sandbox.admin_token, TENANTS, broker, reread_after_s=0
    )
    assert report.ok and report.versions_checked == 12, report.unaudited
