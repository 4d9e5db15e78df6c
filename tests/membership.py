"""A second sample schema, for lookup (fan-out) triggers: accounts have members, members have
subscriptions, subscriptions have invoices. A subscription's tenant is its member's account, so
a member moving to another account moves its subscriptions (one hop, public.members → the
subscriptions resource); a member's invoice total sums its subscriptions' invoices (two hops,
public.invoices → subscriptions → the members resource).

The definition uses the same environment variables as examples/shop.yaml, so the integration
and end-to-end tests load it as they load the shop's, on their own source topics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

MEMBERSHIP_SQL = """
CREATE TABLE accounts (id bigint PRIMARY KEY, external_id text NOT NULL UNIQUE);
CREATE TABLE members (
    id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts, name text NOT NULL
);
CREATE TABLE subscriptions (
    id bigint PRIMARY KEY, member_id bigint NOT NULL REFERENCES members, plan text NOT NULL
);
CREATE TABLE invoices (
    id bigint PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions,
    total_cents bigint NOT NULL
);
-- the invoices trigger reads before images: an invoice moved or deleted makes its old
-- subscription's member dirty too
ALTER TABLE invoices REPLICA IDENTITY FULL;
"""
MEMBERSHIP_TABLES = ("public.accounts", "public.members", "public.subscriptions", "public.invoices")

SUBSCRIPTIONS_OF_MEMBERS = "SELECT id FROM subscriptions WHERE member_id = ANY(%(ids)s::bigint[])"
MEMBERS_OF_SUBSCRIPTIONS = "SELECT member_id FROM subscriptions WHERE id = ANY(%(ids)s::bigint[])"

# The Reach schemas of the two resources, as the partner API creates them.
REACH_SCHEMAS: list[dict[str, Any]] = [
    {
        "name": "club_members",
        "description": "members with the total of their invoices",
        "category": "custom_schema",
        "externalIdField": "memberId",
        "schema": {
            "type": "object",
            "required": ["memberId"],
            "additionalProperties": False,
            "properties": {
                "memberId": {"type": "string", "minLength": 1},
                "name": {"type": "string"},
                "invoiceTotal": {"type": "integer", "minimum": 0},
            },
        },
    },
    {
        "name": "club_subscriptions",
        "description": "subscriptions, in the tenant of their member's account",
        "category": "custom_schema",
        "externalIdField": "subscriptionId",
        "schema": {
            "type": "object",
            "required": ["subscriptionId"],
            "additionalProperties": False,
            "properties": {
                "subscriptionId": {"type": "string", "minLength": 1},
                "memberId": {"type": "string"},
                "plan": {"type": "string"},
            },
        },
    },
]


def membership_definition(topic_pattern: str) -> dict[str, Any]:
    """The definition's data, reading source topics matching ``topic_pattern``."""
    return {
        "version": 1,
        "source": {
            "kafka": {
                "bootstrap_servers": "${REACH_SYNC_BOOTSTRAP_SERVERS}",
                "group_id": "${REACH_SYNC_GROUP_ID}",
                "topic_pattern": topic_pattern,
                "session_timeout_ms": "${REACH_SYNC_SESSION_TIMEOUT_MS:-45000}",
                "leave_group_on_close": "${REACH_SYNC_LEAVE_GROUP_ON_CLOSE:-true}",
            },
            "database": {"dsn_env": "REACH_SYNC_DATABASE_URL", "statement_timeout_ms": 5000},
        },
        "resources": {
            "members": {
                "reach_schema": "club_members",
                "key": "id",
                "tenant": "tenant",
                "triggers": [
                    {"table": "public.members", "id": "id"},
                    {
                        "table": "public.invoices",
                        "id": "subscription_id",
                        "replica_identity": "full",
                        "lookup": MEMBERS_OF_SUBSCRIPTIONS,
                    },
                ],
                "query": (
                    "SELECT m.id, a.external_id AS tenant, m.name,"
                    " (SELECT coalesce(sum(i.total_cents), 0) FROM invoices i"
                    "   JOIN subscriptions s ON s.id = i.subscription_id"
                    "  WHERE s.member_id = m.id) AS invoice_total_cents"
                    " FROM members m JOIN accounts a ON a.id = m.account_id"
                    " WHERE m.id = ANY(%(ids)s)"
                ),
                "mapping": {
                    "memberId": {"column": "id", "format": "string"},
                    "name": {"column": "name"},
                    "invoiceTotal": {"column": "invoice_total_cents", "format": "integer"},
                },
                "delivery": {"mode": "batch", "window_ms": 300},
                "tenants_query": "SELECT external_id FROM accounts",
            },
            "subscriptions": {
                "reach_schema": "club_subscriptions",
                "key": "id",
                "tenant": "tenant",
                "triggers": [
                    {"table": "public.subscriptions", "id": "id"},
                    {"table": "public.members", "id": "id", "lookup": SUBSCRIPTIONS_OF_MEMBERS},
                ],
                "query": (
                    "SELECT s.id, a.external_id AS tenant, s.member_id, s.plan"
                    " FROM subscriptions s JOIN members m ON m.id = s.member_id"
                    " JOIN accounts a ON a.id = m.account_id WHERE s.id = ANY(%(ids)s)"
                ),
                "mapping": {
                    "subscriptionId": {"column": "id", "format": "string"},
                    "memberId": {"column": "member_id", "format": "string"},
                    "plan": {"column": "plan"},
                },
                "delivery": {"mode": "batch", "window_ms": 300},
                "tenants_query": "SELECT external_id FROM accounts",
            },
        },
        "destination": {
            "base_url": "${REACH_SYNC_REACH_URL}",
            "auth": {
                "mode": "jwt",
                "partner_id": "${REACH_SYNC_PARTNER_ID}",
                "secret_env": "REACH_SYNC_JWT_SECRET",
            },
        },
        "redis": {
            "url_env": "REACH_SYNC_REDIS_URL",
            "key_prefix": "${REACH_SYNC_REDIS_PREFIX:-reach-sync:membership}",
        },
        "topics": {
            "dirty": "${REACH_SYNC_DIRTY_TOPIC}",
            "dirty_partitions": 4,
            "dead_letter": "${REACH_SYNC_DEAD_LETTER_TOPIC}",
        },
    }


def write_membership_definition(path: Path, topic_pattern: str, **changes: Any) -> Path:
    """The definition as a YAML file; ``changes`` replace top-level entries' data."""
    data = {**membership_definition(topic_pattern), **changes}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def apply_membership_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(MEMBERSHIP_SQL)
