"""Lookup (fan-out) triggers through the whole pipeline, on a schema of their own.

tests/membership.py's accounts, members, subscriptions and invoices are created in the stack's
database, captured by a Debezium runner of their own (own slot, own topics) and synced to two
Reach schemas created through the sandbox's partner API. A member moving to another account
must move its subscriptions to the new tenant (one hop); an invoice must update its
subscription's member's total (two hops, before images included); and the router must have run
its lookups once per batch, not once per event. One pipeline serves the module's tests.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict
from reach_devstack.debezium import DebeziumSettings
from reach_devstack.stack import StackEndpoints
from reach_sandbox.testing import mint_partner_jwt

from tests.e2e.helpers import (
    LivePipeline,
    Sandbox,
    assert_converged,
    pipeline_thread,
    sql,
    wait_for,
)
from tests.integration.debezium_fixtures import running_debezium
from tests.membership import REACH_SCHEMAS, apply_membership_schema, write_membership_definition

TRIGGER_TABLES = ("public.members", "public.subscriptions", "public.invoices")
MEMBERS, SUBSCRIPTIONS = "club_members", "club_subscriptions"
TIMEOUT_S = 60.0


@dataclass
class Club:
    endpoints: StackEndpoints
    running: LivePipeline
    sandbox: Sandbox

    @property
    def dsn(self) -> str:
        return self.endpoints.postgres_dsn


def _create_reach_schemas(endpoints: StackEndpoints) -> None:
    token = mint_partner_jwt(endpoints.reach_jwt_secret, endpoints.reach_partner_id)
    with httpx.Client(
        base_url=endpoints.sandbox_url, headers={"authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        for schema in REACH_SCHEMAS:
            http.post("/partner/schema-definitions", json=schema).raise_for_status()


def _debezium(endpoints: StackEndpoints, state: Path, name: str) -> DebeziumSettings:
    conninfo = conninfo_to_dict(endpoints.postgres_dsn)
    password = state / "pg-password"
    state.mkdir(parents=True, exist_ok=True)
    password.write_text(str(conninfo["password"]))
    password.chmod(0o600)
    return DebeziumSettings(
        bootstrap_servers=endpoints.bootstrap_servers,
        pg_host="127.0.0.1",
        pg_port=int(str(conninfo["port"])),
        pg_user=str(conninfo["user"]),
        pg_password_file=password,
        pg_database=str(conninfo["dbname"]),
        topic_prefix=name,
        tables=TRIGGER_TABLES,
        state_dir=state,
        slot_name=name,
        publication_name=name,
    )


@pytest.fixture(scope="module")
def club(shop_stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Club]:
    """The schema seeded (members 1 and 2 in accounts merchant-1 and merchant-2; subscriptions
    10 and 11 of member 1, 12 of member 2), captured, and synced until Reach equals it."""
    dsn, name = shop_stack.postgres_dsn, f"club_{uuid.uuid4().hex[:8]}"
    state = tmp_path_factory.mktemp("club")
    apply_membership_schema(dsn)
    sql(
        dsn,
        "INSERT INTO accounts VALUES (1, 'merchant-1'), (2, 'merchant-2')",
        "INSERT INTO members VALUES (1, 1, 'Ann'), (2, 2, 'Bob')",
        "INSERT INTO subscriptions VALUES (10, 1, 'basic'), (11, 1, 'pro'), (12, 2, 'pro')",
    )
    _create_reach_schemas(shop_stack)
    config = write_membership_definition(
        state / "membership.yaml", rf"^{name}\.public\.(members|subscriptions|invoices)$"
    )
    try:
        with (
            running_debezium(_debezium(shop_stack, state / "debezium", name), state / "dbz.log"),
            pipeline_thread(shop_stack, name, config=config) as running,
        ):
            assert_converged(running.definition, shop_stack)
            yield Club(shop_stack, running, Sandbox.of(shop_stack))
    finally:
        sql(
            dsn,
            "DROP TABLE IF EXISTS invoices, subscriptions, members, accounts",
            (
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND NOT active",
                (name,),
            ),
        )
        shutil.rmtree(state, ignore_errors=True)


def test_a_member_moving_account_moves_all_its_subscriptions_to_the_new_tenant(
    club: Club,
) -> None:
    for subscription in ("10", "11"):
        assert club.sandbox.current("merchant-1", SUBSCRIPTIONS, subscription) is not None

    sql(club.dsn, "UPDATE members SET account_id = 2 WHERE id = 1")

    for subscription, plan in (("10", "basic"), ("11", "pro")):
        moved = wait_for(
            lambda s=subscription: club.sandbox.current("merchant-2", SUBSCRIPTIONS, s),
            TIMEOUT_S,
            f"subscription {subscription} in merchant-2",
            guard=club.running.check_alive,
        )
        assert moved == {"subscriptionId": subscription, "memberId": "1", "plan": plan}
        wait_for(
            lambda s=subscription: club.sandbox.current("merchant-1", SUBSCRIPTIONS, s) is None,
            TIMEOUT_S,
            f"subscription {subscription} gone from merchant-1",
            guard=club.running.check_alive,
        )
    # Member 2's subscription never moved; everything equals the database.
    assert club.sandbox.current("merchant-2", SUBSCRIPTIONS, "12") is not None
    assert_converged(club.running.definition, club.endpoints)


def test_an_invoice_updates_its_subscriptions_member_two_hops_away(club: Club) -> None:
    def total(tenant: str, member: str) -> object:
        return (club.sandbox.current(tenant, MEMBERS, member) or {}).get("invoiceTotal")

    sql(club.dsn, "INSERT INTO invoices VALUES (500, 12, 4200)")
    wait_for(lambda: total("merchant-2", "2") == 4200, TIMEOUT_S, "member 2's new total")

    # Moved to subscription 10 (member 1): the before image makes member 2 dirty as well.
    sql(club.dsn, "UPDATE invoices SET subscription_id = 10 WHERE id = 500")
    wait_for(lambda: total("merchant-2", "1") == 4200, TIMEOUT_S, "member 1's new total")
    wait_for(lambda: total("merchant-2", "2") == 0, TIMEOUT_S, "member 2's total back to 0")
    assert_converged(club.running.definition, club.endpoints)


def test_the_router_ran_one_lookup_per_trigger_per_batch(club: Club) -> None:
    before = club.running.stats.router
    assert before is not None
    # 30 new members with a subscription each, then all of them renamed in one statement: many
    # member events close together, each an input of the subscriptions' lookup.
    sql(
        club.dsn,
        "INSERT INTO members SELECT m, 1, 'member ' || m FROM generate_series(100, 129) m",
        "INSERT INTO subscriptions SELECT m * 10, m, 'basic' FROM generate_series(100, 129) m",
        "UPDATE members SET name = name || '!' WHERE id >= 100",
    )
    wait_for(
        lambda: (
            (club.sandbox.current("merchant-1", MEMBERS, "129") or {}).get("name") == "member 129!"
        ),
        TIMEOUT_S,
        "the renamed members",
        guard=club.running.check_alive,
    )
    assert_converged(club.running.definition, club.endpoints)
    after = club.running.stats.router
    assert after is not None and after.retries == 0
    lookups, batches = after.lookups - before.lookups, after.batches - before.batches
    # Two lookup triggers: at most two queries per batch, and far fewer than the 60 member
    # events that fed them (each found the member's subscription: 30 entities at least).
    assert 1 <= lookups <= 2 * batches
    assert lookups < 30
    assert after.looked_up - before.looked_up >= 30
