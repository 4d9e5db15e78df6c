"""``backfill --dry-run``: what a backfill would make dirty, counted, without writing anything.

It walks the same pages with the same filters and asks the resource query for each id's tenant,
so the counts are exact (and cost one walk); nothing is checkpointed or produced.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from consumer.backfill.scope import BackfillScope
from consumer.backfill.walk import checked_walkers, connect
from consumer.config import SyncDefinition
from consumer.router.dirty import EntityId

__all__ = ["DryRun", "dry_run"]

FIRST_IDS = 5


@dataclass
class DryRun:
    # resource -> tenant -> count, and the first ids of each resource
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    first: dict[str, list[EntityId]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        for resource, per_tenant in self.counts.items():
            first = ", ".join(str(i) for i in self.first.get(resource, []))
            out.append(
                f"{resource}: {sum(per_tenant.values()):,} entities"
                + (f"; first: {first}" if first else "")
            )
            out.extend(f"  {tenant}: {n:,}" for tenant, n in sorted(per_tenant.items()))
        return out


async def dry_run(definition: SyncDefinition, scope: BackfillScope, page_size: int) -> DryRun:
    result = DryRun()
    conn = await connect(definition.source.database)
    try:
        for name, walker in (await checked_walkers(conn, definition, scope)).items():
            counts, first = (
                result.counts.setdefault(name, Counter()),
                result.first.setdefault(name, []),
            )
            after: EntityId | None = None
            while True:
                page = await walker.page(after, page_size)
                for entity_id, tenant in await walker.tenants_of(page.ids):
                    counts[tenant] += 1
                    if len(first) < FIRST_IDS:
                        first.append(entity_id)
                if page.last is None:
                    break
                after = page.last
    finally:
        await conn.close()
    return result
