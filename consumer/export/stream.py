"""Every entity of a resource, projected exactly as the syncer sends it, one page at a time.

The ids come from the backfill's keyset walk (backfill/walk.py), each page is recomputed with the
syncer's own query (sink/recompute.py, group columns included) and each row projected by
sink/projection.py, PII policy included: an export or a sample can hold nothing the API path
would not send. A row that cannot be read or projected is yielded as ``Rejected`` (id and reason;
reasons never hold values), never as a record. Memory holds one page at a time.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from consumer.backfill.walk import IdWalker, connect, ids_query
from consumer.config import Resource, SyncDefinition
from consumer.errors import BadRecord, ConfigurationError
from consumer.router.dirty import EntityId
from consumer.sink.projection import Projected, project
from consumer.sink.recompute import SourceDatabase

__all__ = ["PAGE_SIZE", "Rejected", "Walked", "first_records", "projected_records", "unknown"]

PAGE_SIZE = 500

# Called after each page: ids walked so far, and how many there are in all (None: unknown).
Walked = Callable[[int, int | None], None]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An entity whose row cannot be read or projected: its id and why, never its values."""

    entity_id: str
    reason: str


async def projected_records(
    definition: SyncDefinition,
    name: str,
    *,
    tenants: Sequence[str] = (),
    page_size: int = PAGE_SIZE,
    walked: Walked | None = None,
) -> AsyncGenerator[Projected | Rejected, None]:
    """The resource's records in id order, of ``tenants`` only when given. ConfigurationError
    for a tenant the resource's ``tenants_query`` does not list, before any page is read."""
    resource = definition.resources[name]
    conn = await connect(definition.source.database)
    db = SourceDatabase(definition.source.database)
    try:
        await db.open()
        await _known_tenants(db, name, resource, tenants)
        page_query = await ids_query(conn, name, resource)
        walker = IdWalker(conn, name, resource, page_query, tenants=tenants)
        await walker.check()
        total = await walker.total() if walked is not None else None
        after: EntityId | None = None
        done = 0
        while True:
            page = await walker.page(after, page_size)
            done += page.walked
            if page.ids:
                for item in await _page(db, resource, page.ids, set(tenants)):
                    yield item
            if walked is not None:
                walked(done, total)
            if page.last is None:
                return
            after = page.last
    finally:
        await db.close()
        await conn.close()


async def first_records(
    definition: SyncDefinition, name: str, count: int, *, tenants: Sequence[str] = ()
) -> tuple[list[Projected], int]:
    """The first ``count`` records in id order, and how many rows were rejected on the way."""
    records: list[Projected] = []
    rejected = 0
    page_size = min(count, PAGE_SIZE)
    stream = projected_records(definition, name, tenants=tenants, page_size=page_size)
    async with aclosing(stream) as items:
        async for item in items:
            if isinstance(item, Rejected):
                rejected += 1
                continue
            records.append(item)
            if len(records) == count:
                break
    return records, rejected


def unknown(definition: SyncDefinition, name: str, tenants: Sequence[str], seen: set[str]) -> None:
    """A requested tenant with no entity, on a resource without ``tenants_query`` (nothing else
    tells it from a mistyped one): ConfigurationError naming it."""
    if definition.resources[name].tenants_query is not None:
        return
    missing = [t for t in tenants if t not in seen]
    if missing:
        raise ConfigurationError(
            f"no entity of {name} has tenant {', '.join(missing)} (the resource has no "
            "tenants_query to tell a tenant without entities from an unknown one)"
        )


async def _known_tenants(
    db: SourceDatabase, name: str, resource: Resource, tenants: Sequence[str]
) -> None:
    if not tenants or resource.tenants_query is None:
        return
    known = set(await db.tenants(resource))
    missing = [t for t in tenants if t not in known]
    if missing:
        raise ConfigurationError(
            f"no tenant {', '.join(missing)} in {name} (its tenants_query lists {len(known)})"
        )


async def _page(
    db: SourceDatabase, resource: Resource, ids: list[EntityId], tenants: set[str]
) -> list[Projected | Rejected]:
    """One page's records, in the walk's order. An id with no row was deleted since the walk
    read it: it is not exported. A row whose tenant moved out of ``tenants`` is not either."""
    recomputed = await db.recompute(resource, ids)
    items: list[Projected | Rejected] = []
    for entity_id in ids:
        key = str(entity_id)
        failure = recomputed.failed.get(key)
        if failure is not None:
            items.append(Rejected(key, str(failure)))
            continue
        row = recomputed.rows.get(key)
        if row is None:
            continue
        try:
            projected = project(resource, row)
        except BadRecord as exc:
            items.append(Rejected(key, str(exc)))
            continue
        if not tenants or projected.tenant in tenants:
            items.append(projected)
    return items
