"""Does the Reach sandbox equal the projection of the source database, for every entity?

The demo and the end-to-end tests ask this after a run. Expected: every row of each resource's
own table, recomputed and projected exactly as the syncer would. Actual: what the sandbox holds,
read through its admin API. Reach merges and drops null fields, so the expected record is
compared without its nulls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from psycopg import sql

from consumer.config import Resource, SyncDefinition
from consumer.sink.projection import project
from consumer.sink.recompute import SourceDatabase

__all__ = ["Difference", "verify_sandbox"]

# Entities recomputed per query while verifying.
CHUNK = 1000
PAGE = 1000


@dataclass
class Difference:
    resource: str
    missing: list[tuple[str, str]] = field(default_factory=list)  # expected, not in the sandbox
    extra: list[tuple[str, str]] = field(default_factory=list)  # in the sandbox, not expected
    different: list[tuple[str, str]] = field(default_factory=list)
    checked: int = 0

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different)


def _own_ids(dsn: str, resource: Resource) -> list[Any]:
    """All ids of the resource: its first trigger is its own table, keyed by the entity id."""
    trigger = resource.triggers[0]
    schema, table = trigger.table.split(".")
    query = sql.SQL("SELECT DISTINCT {} FROM {}.{}").format(
        sql.Identifier(trigger.id), sql.Identifier(schema), sql.Identifier(table)
    )
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute(query)]


async def _expected(
    db: SourceDatabase, resource: Resource, ids: list[Any]
) -> dict[tuple[str, str], dict[str, Any]]:
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for start in range(0, len(ids), CHUNK):
        recomputed = await db.recompute(resource, ids[start : start + CHUNK])
        for row in recomputed.rows.values():
            item = project(resource, row)
            expected[(item.tenant, item.external_id)] = {
                k: v for k, v in item.record.items() if v is not None
            }
    return expected


def _actual(
    sandbox_url: str, admin_token: str, tenants: list[str], schema: str
) -> dict[tuple[str, str], dict[str, Any]]:
    actual: dict[tuple[str, str], dict[str, Any]] = {}
    headers = {"authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=sandbox_url, headers=headers, timeout=30) as http:
        for tenant in tenants:
            cursor = None
            while True:
                params: dict[str, Any] = {"tenant": tenant, "schema": schema, "limit": PAGE}
                if cursor:
                    params["cursor"] = cursor
                page = http.get("/_admin/resources", params=params).raise_for_status().json()
                for item in page["resources"]:
                    actual[(tenant, item["resourceExternalId"])] = item["data"]
                cursor = page.get("cursor")
                if not cursor or not page["resources"]:
                    break
    return actual


async def verify_sandbox(
    definition: SyncDefinition, sandbox_url: str, admin_token: str, tenants: list[str]
) -> list[Difference]:
    """One Difference per resource; ``tenants`` are the tenant values the resources use."""
    dsn = definition.source.database.dsn.get_secret_value()
    db = SourceDatabase(definition.source.database)
    await db.open()
    differences = []
    try:
        for name, resource in definition.resources.items():
            expected = await _expected(db, resource, _own_ids(dsn, resource))
            actual = _actual(sandbox_url, admin_token, tenants, resource.reach_schema)
            diff = Difference(name, checked=len(expected))
            diff.missing = sorted(set(expected) - set(actual))
            diff.extra = sorted(set(actual) - set(expected))
            diff.different = sorted(
                k for k in set(expected) & set(actual) if expected[k] != actual[k]
            )
            differences.append(diff)
    finally:
        await db.close()
    return differences
