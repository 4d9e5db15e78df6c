"""Lookups (fan-out triggers) on a real Postgres: what they find, how they fail, how a broken one
is refused at startup, and what ``reach-sync plan`` shows for them. The router running them once
per batch: test_router.py."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
import yaml
from reach_devstack.postgres import PostgresConfig

from consumer.cli.main import main
from consumer.config import DatabaseSource, SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import ConfigurationError, Retryable
from consumer.router.lookups import Found, LookupDatabase, check_queries
from consumer.router.loop import run_router
from tests.membership import (
    MEMBERS_OF_SUBSCRIPTIONS,
    SUBSCRIPTIONS_OF_MEMBERS,
    apply_membership_schema,
    membership_definition,
)

ENV = {
    "REACH_SYNC_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "REACH_SYNC_GROUP_ID": "lookups",
    "REACH_SYNC_DIRTY_TOPIC": "lookups.dirty",
    "REACH_SYNC_DEAD_LETTER_TOPIC": "lookups.dead-letter",
    "REACH_SYNC_PARTNER_ID": "partner-1",
    "REACH_SYNC_JWT_SECRET": "unused",
    "REACH_SYNC_REACH_URL": "http://127.0.0.1:1",
    "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:1/0",
}


@pytest.fixture
def dsn(database: PostgresConfig) -> str:
    """The membership schema: member 1 (account 1) with subscriptions 10 and 11, member 2
    (account 2) with 12, member 3 with none."""
    apply_membership_schema(database.dsn)
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts VALUES (1, 'acct-1'), (2, 'acct-2')")
        conn.execute("INSERT INTO members VALUES (1, 1, 'Ann'), (2, 2, 'Bob'), (3, 1, 'Cy')")
        conn.execute(
            "INSERT INTO subscriptions VALUES (10, 1, 'basic'), (11, 1, 'pro'), (12, 2, 'pro')"
        )
    return database.dsn


def _source(dsn: str, statement_timeout_ms: int = 5000) -> DatabaseSource:
    return DatabaseSource.model_validate({"dsn": dsn, "statement_timeout_ms": statement_timeout_ms})


def _definition(tmp_path: Path, dsn: str, **lookups: str) -> SyncDefinition:
    """tests/membership.py's definition; ``lookups`` replaces a resource's lookup."""
    data = membership_definition(r"^lookups\.public\.(members|invoices)$")
    for name, lookup in lookups.items():
        triggers = data["resources"][name]["triggers"]
        data["resources"][name]["triggers"] = [
            {**t, "lookup": lookup} if "lookup" in t else t for t in triggers
        ]
    path = tmp_path / "membership.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_definition(path, {**ENV, "REACH_SYNC_DATABASE_URL": dsn})


def test_a_lookup_maps_the_batchs_ids_to_distinct_entities(dsn: str) -> None:
    db = LookupDatabase(_source(dsn))
    try:
        # Ids come as text, typed or not; a member without subscriptions finds nothing.
        found = db.look_up("subscriptions", 1, SUBSCRIPTIONS_OF_MEMBERS, ["1", "2", "3"])
        assert sorted(f.entity_id for f in found) == [10, 11, 12]
        # Two subscriptions of one member: the member once.
        assert db.look_up("members", 1, MEMBERS_OF_SUBSCRIPTIONS, ["10", "11"]) == [Found(1)]
        with_input = "SELECT id, member_id FROM subscriptions WHERE member_id = ANY(%(ids)s)"
        assert sorted(db.look_up("subscriptions", 1, with_input, ["2"]), key=str) == [
            Found(12, "2")
        ]
        assert db.look_up("subscriptions", 1, SUBSCRIPTIONS_OF_MEMBERS, []) == []
        assert db.queries == 4
    finally:
        db.close()


def test_a_lookup_that_fails_is_retryable_and_the_next_one_reconnects(dsn: str) -> None:
    db = LookupDatabase(_source(dsn, statement_timeout_ms=200))
    try:
        assert db.look_up("members", 1, MEMBERS_OF_SUBSCRIPTIONS, ["12"]) == [Found(2)]
        # The connection is lost (a failover, an administrator, a restart)...
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(Retryable, match=r"lookup resources\.members\.triggers\[1\]\.lookup"):
            db.look_up("members", 1, MEMBERS_OF_SUBSCRIPTIONS, ["12"])
        # ...and the next batch's lookup runs on a new connection.
        assert db.look_up("members", 1, MEMBERS_OF_SUBSCRIPTIONS, ["12"]) == [Found(2)]

        slow = "SELECT member_id FROM subscriptions, pg_sleep(1) WHERE id = ANY(%(ids)s::bigint[])"
        with pytest.raises(Retryable, match="statement timeout"):
            db.look_up("members", 1, slow, ["12"])
        # A server error while routing is retried too, with the database's message: the
        # trigger must never be dropped (a broken query is refused at startup instead).
        with pytest.raises(Retryable, match=r'column "nope" does not exist'):
            db.look_up("members", 1, "SELECT nope FROM members WHERE id = ANY(%(ids)s)", ["1"])
        # The connection is read-only.
        writing = "INSERT INTO accounts SELECT 9, 'x' WHERE 1 = ANY(%(ids)s::int[]) RETURNING id"
        with pytest.raises(Retryable, match="read-only transaction"):
            db.look_up("members", 1, writing, ["1"])
        assert db.look_up("members", 1, MEMBERS_OF_SUBSCRIPTIONS, ["10"]) == [Found(1)]
    finally:
        db.close()


def test_startup_refuses_a_lookup_with_a_missing_column_naming_the_trigger(
    tmp_path: Path, dsn: str
) -> None:
    broken = "SELECT id FROM subscriptions WHERE member = ANY(%(ids)s::bigint[])"
    definition = _definition(tmp_path, dsn, subscriptions=broken)
    # Before the broker is ever contacted (it does not exist here).
    with pytest.raises(ConfigurationError) as caught:
        run_router(definition, threading.Event())
    assert caught.value.scope == "resources.subscriptions.triggers[1].lookup"
    assert str(caught.value) == (
        "resources.subscriptions.triggers[1].lookup: the lookup on public.members fails: "
        'column "member" does not exist'
    )


def test_startup_checks_every_lookup_and_query_and_names_each_that_fails(
    tmp_path: Path, dsn: str
) -> None:
    db = LookupDatabase(_source(dsn))
    try:
        check_queries(_definition(tmp_path, dsn), db)  # the membership definition is sound
        definition = _definition(
            tmp_path, dsn, members="SELECT member_id FROM subscriptionz WHERE id = ANY(%(ids)s)"
        )
        query = definition.resources["subscriptions"].query.replace("s.plan", "s.plans")
        resources = {
            **definition.resources,
            "subscriptions": definition.resources["subscriptions"].model_copy(
                update={"query": query}
            ),
        }
        with pytest.raises(ConfigurationError) as caught:
            check_queries(definition.model_copy(update={"resources": resources}), db)
        assert caught.value.scope == "resources"
        problems = str(caught.value).split("; ")
        assert problems[0] == (
            "resources.members.triggers[1].lookup: the lookup on public.invoices fails: "
            'relation "subscriptionz" does not exist'
        )
        assert problems[1].startswith("resources.subscriptions.query: the query fails: column")
        assert "plans" in problems[1]
    finally:
        db.close()
    with pytest.raises(Retryable, match="source database unavailable"):
        check_queries(definition, LookupDatabase(_source("postgresql://x@127.0.0.1:1/none")))


def test_plan_runs_the_lookups_of_the_planned_row_on_the_source_database(
    tmp_path: Path,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "membership.yaml"
    _definition(tmp_path, dsn)
    for name, value in {**ENV, "REACH_SYNC_DATABASE_URL": dsn}.items():
        monkeypatch.setenv(name, value)

    # Member 1 moves to account 2: it, and through the lookup its two subscriptions.
    row = '{"id": 1, "account_id": 2, "name": "Ann"}'
    assert main(["plan", str(path), "--table", "public.members", "--row", row]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "u on public.members: members/1",
        "u on public.members: subscriptions/10 (via the lookup "
        "resources.subscriptions.triggers[1].lookup with ids 1)",
        "u on public.members: subscriptions/11 (via the lookup "
        "resources.subscriptions.triggers[1].lookup with ids 1)",
    ]
    # An invoice moved from subscription 12 to 10: both members, two hops away.
    invoice = ["--table", "public.invoices", "--row", '{"id": 7, "subscription_id": 10}']
    before = ["--before", '{"id": 7, "subscription_id": 12}']
    assert main(["plan", str(path), *invoice, *before]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"u on public.invoices: members/{m} (via the lookup "
        "resources.members.triggers[1].lookup with ids 10, 12)"
        for m in (1, 2)
    ]
    # A lookup that fails is said so, with the database's message.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE subscriptions RENAME COLUMN member_id TO owner_id")
    assert main(["plan", str(path), "--table", "public.members", "--row", row]) == 1
    assert 'column "member_id" does not exist' in capsys.readouterr().err
