"""One step of a case without Kafka: every entity of every resource recomputed, projected,
deduplicated and delivered to the sandbox through the same code the syncer runs (sink/).

Which entities: every id each resource's backfill would walk (its id source, backfill/walk.py),
plus every id an earlier step saw, so a deleted row comes back as a delete. Triggers are not
exercised here; ``--e2e`` runs the whole pipeline for that.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import httpx
import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from consumer.backfill.scope import BackfillScope
from consumer.backfill.walk import checked_walkers, connect
from consumer.config import Resource, SyncDefinition
from consumer.definition_tests.cases import Step
from consumer.definition_tests.observed import Observations, Observed
from consumer.errors import BadRecord, ConfigurationError
from consumer.reach.client import ReachClient
from consumer.router.dirty import EntityId
from consumer.sink.dedup import LastSentStore
from consumer.sink.delivery import deliver_resource
from consumer.sink.outcomes import Removed, Sent
from consumer.sink.recompute import SourceDatabase

__all__ = ["DirectRun", "apply_step"]

PAGE = 10_000


async def apply_step(
    conn: psycopg.AsyncConnection[Any],
    step: Step,
    before_commit: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> None:
    """The step's SQL, then its rows, in one transaction: the step is one change.
    ``before_commit`` sees the step's rows before anyone else can."""
    async with conn.transaction():
        if step.sql is not None:
            await conn.execute(sql.SQL(step.sql))  # the partner's SQL, as run by the partner
        for table, rows in step.rows.items():
            for row in rows:
                names = list(row)
                statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    sql.Identifier(*table.split(".")),
                    sql.SQL(", ").join(map(sql.Identifier, names)),
                    sql.SQL(", ").join(sql.Placeholder() * len(names)),
                )
                await conn.execute(statement, [_param(row[n]) for n in names])
        if before_commit is not None:
            await before_commit(conn)


def _param(value: Any) -> Any:
    """A YAML mapping goes to a json/jsonb column as JSON; a list to an array column (a JSON
    array is written as its text)."""
    return Jsonb(value) if isinstance(value, dict) else value


def reason_of(error: Exception) -> str:
    """A dead letter's reason, with what Reach answered (which names the field it refused)."""
    body = error.body if isinstance(error, BadRecord) else None
    return f"{error}: {body}" if body else str(error)


def as_sent(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as Reach reads it off the wire, decimals exact (as the cases write them)."""
    parsed: dict[str, Any] = json.loads(orjson.dumps(record), parse_float=Decimal)
    return parsed


class DirectRun:
    """The sink's parts for one case, and the ids seen so far."""

    def __init__(
        self,
        definition: SyncDefinition,
        *,
        client: ReachClient,
        db: SourceDatabase,
        last_sent: LastSentStore,
        ensure_tenants: Callable[[Sequence[str]], Any],
    ) -> None:
        self._definition = definition
        self._client = client
        self._db = db
        self._last_sent = last_sent
        self._ensure_tenants = ensure_tenants
        self._seen: dict[str, set[str]] = {name: set() for name in definition.resources}

    async def step(self) -> Observations:
        ids = await self._all_ids()
        observed: Observations = {}
        for name, resource in self._definition.resources.items():
            wanted = sorted(set(map(str, ids[name])) | self._seen[name])
            observed[name] = await self._resource(name, resource, wanted)
            self._seen[name] |= set(wanted)
        return observed

    async def _all_ids(self) -> dict[str, list[EntityId]]:
        conn = await connect(self._definition.source.database)
        try:
            return await all_ids(conn, self._definition)
        finally:
            await conn.close()

    async def _resource(self, name: str, resource: Resource, ids: list[str]) -> dict[str, Observed]:
        if not ids:
            return {}
        recomputed = await self._db.recompute(resource, list(ids))
        tenants = {row[resource.tenant] for row in recomputed.rows.values()}
        await self._ensure_tenants(sorted(str(t) for t in tenants if t is not None))
        observed: dict[str, Observed] = {}

        async def accepted(sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
            for s in sent:
                observed[s.projected.external_id] = Observed(
                    "parked" if s.parked else "sent",
                    as_sent(s.projected.record),
                    tenant=s.projected.tenant,
                )
            for r in removed:
                observed[r.external_id] = Observed("deleted", tenant=r.tenant)

        result = await deliver_resource(
            name,
            resource,
            recomputed,
            client=self._client,
            last_sent=self._last_sent,
            tenants=self._db,
            on_accepted=accepted,
        )
        for letter in result.dead:
            observed[letter.entity_id] = Observed("dead_letter", reason=reason_of(letter.error))
        for entity_id, error in recomputed.failed.items():
            observed[str(entity_id)] = Observed("dead_letter", reason=str(error))
        for held in result.held:
            for entity_id in held.ids:
                observed[entity_id] = Observed("held", reason=str(held.error))
        for entity_id in recomputed.rows:
            observed.setdefault(str(entity_id), Observed("skipped"))
        return observed


async def all_ids(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition
) -> dict[str, list[EntityId]]:
    """Every id of every resource, as its backfill would walk them."""
    walkers = await checked_walkers(conn, definition, BackfillScope.of(definition, "backfill"))
    found: dict[str, list[EntityId]] = {}
    for name, walker in walkers.items():
        found[name] = []
        after: EntityId | None = None
        while True:
            page = await walker.page(after, PAGE)
            found[name] += page.ids
            if page.last is None:
                break
            after = page.last
    return found


async def tenants_in(conn: psycopg.AsyncConnection[Any], definition: SyncDefinition) -> set[str]:
    """Every tenant the resources' rows name, as ``conn`` sees them (its open transaction
    included): the tenants Reach must know before the pipeline sends a step's changes."""
    tenants: set[str] = set()
    for name, ids in (await all_ids(conn, definition)).items():
        resource = definition.resources[name]
        if not ids:
            continue
        cursor = await conn.execute(
            sql.SQL("SELECT {} FROM ({}) AS q").format(
                sql.Identifier(resource.tenant),
                sql.SQL(resource.query.strip().rstrip(";")),
            ),
            {"ids": [str(i) for i in ids]},
        )
        tenants |= {str(row[0]) for row in await cursor.fetchall() if row[0] is not None}
    return tenants


async def create_tenants(client: httpx.AsyncClient, tenants: Sequence[str]) -> None:
    """Tenants the sandbox does not know yet, created as the partner's onboarding would."""
    for tenant in tenants:
        response = await client.post(
            "/partner/tenants", json={"external_id": tenant, "name": tenant, "locations": []}
        )
        if response.status_code not in (200, 201, 409):
            raise ConfigurationError(
                f"the sandbox did not create tenant {tenant}: {response.status_code} "
                f"{response.text[:200]}"
            )
