"""One dirty-topic partition's held entities: those Reach refused for now (their tenant is
blocked, sink/tenant_gate.py), kept until it accepts them, and the offset a commit must not pass.

The commit rule: a partition commits up to the end of its last finished window, but never past
the lowest offset that carried an entity still held. So after a restart or a rebalance the held
entities are read again from the dirty topic (nothing is lost), and the work after them is read
again too, which is cheap: recomputes are idempotent and dedup skips what Reach already has.

A held entity waits here until some tenant that refused it is no longer blocked; then it goes
back into the partition's next window (``release``), still counted for the commit rule until
that window settles it. ``take_probe`` sends one back early, as the blocked tenant's probe.
Entities are grouped by the tenants that refused them, so the loop's per-poll checks cost one
step per group, not per entity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from consumer.router.dirty import Cause, EntityId
from consumer.syncer.windows import Entity, Window

__all__ = ["HELD_BOUND", "HeldEntities", "HeldEntity"]

# Held entities per partition above which the partition is paused (the consumer keeps polling,
# so it stays in the group): ten windows of Reach's largest batch. A held entity keeps its first
# cause only (it may wait for hours; the first says why), about 0.6 KB with its bookkeeping:
# some 6 MB per partition at most.
HELD_BOUND = 10_000

Tenants = frozenset[str]


@dataclass(slots=True)
class HeldEntity:
    entity_id: EntityId
    tenants: Tenants  # those that refused it
    offset: int  # the lowest dirty-topic offset that carried it
    causes: list[Cause]


class HeldEntities:
    def __init__(self) -> None:
        self._waiting: dict[Tenants, dict[Entity, HeldEntity]] = {}
        self._group: dict[Entity, Tenants] = {}
        self._in_window: dict[Entity, HeldEntity] = {}

    def __len__(self) -> int:
        return len(self._group) + len(self._in_window)

    def floor(self) -> int | None:
        """The lowest offset still held, waiting or back in a window: commits stop there.

        Also read from the poll thread (the final commit of a revoke) while a window that
        outlived the revoke bound may still settle on the loop: hence copies, each taken at
        once, rather than iterating the dicts themselves."""
        groups = [list(group.values()) for group in list(self._waiting.values())]
        held = [*(e for group in groups for e in group), *list(self._in_window.values())]
        return min((e.offset for e in held), default=None)

    def commit_offset(self, done: int | None) -> int | None:
        """Where a commit may go when the windows before offset ``done`` are finished."""
        floor = self.floor()
        return done if floor is None or done is None else min(done, floor)

    def settle(self, window: Window) -> None:
        """After ``window`` finished: each entity it held is kept, under the lowest offset known
        for it; every other entity of it reached an outcome and is let go."""
        if not window.held and not self:
            return  # the usual case: nothing held here, nothing to let go (a window can be big)
        for entity, entity_id in window.ids.items():
            previous = self._pop(entity)
            tenants = window.held.get(entity)
            if tenants is None:
                continue
            offset = window.offsets[entity]
            if previous is not None:
                offset = min(offset, previous.offset)
            causes = window.causes[entity][:1]
            self._wait(entity, HeldEntity(entity_id, frozenset(tenants), offset, causes))

    def release(
        self, blocked: Callable[[str], bool], limit: int
    ) -> list[tuple[Entity, HeldEntity]]:
        """Up to ``limit`` waiting entities that a tenant no longer ``blocked`` refused, moved
        back into a window."""
        released: list[tuple[Entity, HeldEntity]] = []
        for tenants in list(self._waiting):
            if all(blocked(t) for t in tenants):
                continue
            while len(released) < limit and tenants in self._waiting:
                released.append(self._send_back(tenants))
        return released

    def take_probe(self, tenant: str) -> tuple[Entity, HeldEntity] | None:
        """One waiting entity ``tenant`` refused, moved back into a window to probe it."""
        for tenants in self._waiting:
            if tenant in tenants:
                return self._send_back(tenants)
        return None

    def in_window(self) -> set[str]:
        """Tenants with an entity of theirs back in a window (a probe or a release in flight)."""
        return {t for held in self._in_window.values() for t in held.tenants}

    def by_tenant(self) -> Counter[str]:
        """Entities held per tenant (an entity refused by two tenants counts for both). Read
        by readiness, from any thread: from copies, as ``floor``."""
        counts: Counter[str] = Counter()
        for tenants, group in list(self._waiting.items()):
            for tenant in tenants:
                counts[tenant] += len(group)
        for held in list(self._in_window.values()):
            counts.update(held.tenants)
        return counts

    # --- plumbing ------------------------------------------------------------------------------

    def _wait(self, entity: Entity, held: HeldEntity) -> None:
        self._waiting.setdefault(held.tenants, {})[entity] = held
        self._group[entity] = held.tenants

    def _send_back(self, tenants: Tenants) -> tuple[Entity, HeldEntity]:
        """The first waiting entity of ``tenants``' group, moved back into a window."""
        entity, held = next(iter(self._waiting[tenants].items()))
        self._unwait(entity)
        self._in_window[entity] = held
        return entity, held

    def _pop(self, entity: Entity) -> HeldEntity | None:
        return self._in_window.pop(entity, None) or self._unwait(entity)

    def _unwait(self, entity: Entity) -> HeldEntity | None:
        tenants = self._group.pop(entity, None)
        if tenants is None:
            return None
        group = self._waiting[tenants]
        held = group.pop(entity)
        if not group:
            del self._waiting[tenants]
        return held
