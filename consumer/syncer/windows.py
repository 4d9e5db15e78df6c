"""Coalescing windows: the dirty keys of one dirty-topic partition, collected for one recompute.

A window keeps one entry per entity however many triggers arrive for it (that is the
coalescing), remembers the last offset it covers (what to commit once it is done) and the first
offset of each entity (what a commit must not pass while that entity is held), and closes by
age (the shortest ``window_ms`` among its resources) or by size. A key stays in its window until
the window is done, so a quiet entity still flushes when the window's time is up.

Entities held earlier (Reach refused their tenant) come back into a later window with
``readd``, keeping their first offset; processing says which entities it held in ``held``.
A message that is no dirty key is covered with its dead letter, which the window keeps until
the dead-letter topic acknowledged it (window_sink.py).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from consumer.records.deadletter import DeadLetterEvent
from consumer.router.dirty import MAX_CAUSES, Cause, DirtyKey, EntityId

__all__ = ["CAUSE_BYTES", "ENTITY_BYTES", "Entity", "Window"]

# What a window's keys take in memory (tracemalloc, 50,000 decoded keys of the shop): about
# 410 bytes an entity (its entries in the window's dicts) and 215 bytes a cause it keeps, its
# text shared (``_shared``; 435 before). The in-flight bound counts this, not the keys' encoded
# size.
ENTITY_BYTES = 410
CAUSE_BYTES = 215

Entity = tuple[str, str]  # (resource, id as text)


def _shared(cause: Cause) -> Cause:
    """``cause`` with its text that repeats (kind, table, op, topic) shared with every other
    window's (``sys.intern``): decoding makes new strings for each dirty key, about half of
    what a kept cause takes, and a backlog holds tens of thousands of causes. About 0.2 µs."""
    intern = sys.intern
    table, op, topic = cause.table, cause.op, cause.topic
    return msgspec.structs.replace(
        cause,
        kind=intern(cause.kind),
        table=None if table is None else intern(table),
        op=None if op is None else intern(op),
        topic=None if topic is None else intern(topic),
    )


@dataclass
class Window:
    opened_at: float
    due_after_s: float
    end_offset: int = -1
    received: int = 0
    # Estimated memory of the keys taken in (ENTITY_BYTES, CAUSE_BYTES): the in-flight bound's
    # measure.
    size: int = 0
    ids: dict[Entity, EntityId] = field(default_factory=dict)
    causes: dict[Entity, list[Cause]] = field(default_factory=lambda: defaultdict(list))
    # The resources present, kept as keys arrive: the loop asks for them on every poll, and a
    # backlog window holds thousands of entities.
    resources: set[str] = field(default_factory=set)
    # The lowest dirty-topic offset that carried each entity.
    offsets: dict[Entity, int] = field(default_factory=dict)
    # Set by processing: the entities Reach refused for now, with the tenants that refused them.
    held: dict[Entity, set[str]] = field(default_factory=dict)
    # When the router produced the window's oldest key (epoch ms; 0: none known): where the
    # syncer's share of a change's latency starts.
    first_enqueued_ms: int = 0
    # Dead letters of the messages it covers that were no dirty key, not yet acknowledged by
    # the dead-letter topic: each attempt produces them until one is (window_sink.py).
    dead_letters: list[DeadLetterEvent] = field(default_factory=list)

    def add(self, key: DirtyKey, offset: int, window_s: float) -> None:
        # Once per dirty key: written for speed (no tuple of causes unless there are later
        # ones, no min/max calls), with the effect of the plain version.
        resource = sys.intern(key.resource)
        entity = (resource, str(key.id))
        ids = self.ids
        if entity not in ids:
            ids[entity] = key.id
            self.size += ENTITY_BYTES
        offsets = self.offsets
        if entity not in offsets:
            offsets[entity] = offset  # offsets only grow within a partition
        self.resources.add(resource)
        causes = self.causes[entity]
        room = MAX_CAUSES - len(causes)
        if room > 0:
            later = key.later_causes
            if not later:
                causes.append(_shared(key.cause))
                self.size += CAUSE_BYTES
            else:
                kept = [_shared(c) for c in (key.cause, *later)[:room]]
                causes.extend(kept)
                self.size += CAUSE_BYTES * len(kept)
        if offset > self.end_offset:
            self.end_offset = offset
        self.received += key.triggers
        if window_s < self.due_after_s:
            self.due_after_s = window_s
        enqueued = key.enqueued_ms
        if enqueued and (not self.first_enqueued_ms or enqueued < self.first_enqueued_ms):
            self.first_enqueued_ms = enqueued

    def readd(
        self, entity: Entity, entity_id: EntityId, causes: list[Cause], offset: int, window_s: float
    ) -> None:
        """Take back an entity held earlier: its causes come first (they are older) and it
        keeps its first offset; the window's end does not move (that offset lies behind it)."""
        if entity not in self.ids:
            self.ids[entity] = entity_id
            self.size += ENTITY_BYTES + CAUSE_BYTES * len(causes)
        self.resources.add(entity[0])
        self.causes[entity] = [*causes, *self.causes[entity]][:MAX_CAUSES]
        self.offsets[entity] = min(offset, self.offsets.get(entity, offset))
        self.due_after_s = min(self.due_after_s, window_s)

    def hold(self, resource: str, ids: Iterable[str], tenant: str) -> None:
        """Processing held these entities: ``tenant`` refused them."""
        for entity_id in ids:
            self.held.setdefault((resource, entity_id), set()).add(tenant)

    def cover(self, offset: int, letter: DeadLetterEvent) -> None:
        """Count an offset as part of this window without a key: a message that is no dirty
        key, to be dead-lettered with ``letter``. Committing past it waits until this window
        is done, which includes the dead-letter topic acknowledging the letter."""
        self.end_offset = max(self.end_offset, offset)
        self.dead_letters.append(letter)
        self.size += len(letter.key or b"") + len(letter.value or b"")

    def __len__(self) -> int:
        return len(self.ids)

    def due(self, now: float, max_keys: int) -> bool:
        return not self.ids or len(self.ids) >= max_keys or now - self.opened_at >= self.due_after_s

    def absorb(self, later: Window) -> None:
        """Take a later window's keys into this one (a retry then recomputes both at once)."""
        self.resources |= later.resources
        for entity, entity_id in later.ids.items():
            self.ids.setdefault(entity, entity_id)
            room = MAX_CAUSES - len(self.causes[entity])
            self.causes[entity].extend(later.causes[entity][: max(room, 0)])
            offset = later.offsets[entity]
            self.offsets[entity] = min(offset, self.offsets.get(entity, offset))
        self.end_offset = max(self.end_offset, later.end_offset)
        self.dead_letters += later.dead_letters
        self.received += later.received
        self.size += later.size
        if later.first_enqueued_ms and (
            not self.first_enqueued_ms or later.first_enqueued_ms < self.first_enqueued_ms
        ):
            self.first_enqueued_ms = later.first_enqueued_ms
        self.due_after_s = min(self.due_after_s, later.due_after_s)

    def by_resource(self) -> dict[str, list[EntityId]]:
        grouped: dict[str, list[EntityId]] = defaultdict(list)
        for (resource, _), entity_id in self.ids.items():
            grouped[resource].append(entity_id)
        return dict(grouped)

    def first_cause(self, resource: str, entity_id: str) -> Cause:
        causes = self.causes.get((resource, entity_id))
        return causes[0] if causes else Cause(kind="unknown")

    def latencies_ms(self, now_ms: int) -> tuple[list[int], list[int]]:
        """Per entity accepted (held ones are not yet): source commit → now, and source event
        appended to its topic → now (reach-sync's own share). Snapshot reads carry the
        snapshot's time, not a commit's, so they are no latency."""
        latencies: list[int] = []
        own: list[int] = []
        held = self.held
        for entity, causes in self.causes.items():
            if held and entity in held:
                continue
            source: int | None = None  # the earliest change's commit, and its append
            appended: int | None = None
            for c in causes:
                ts = c.source_ts_ms
                if ts and c.op != "r":
                    if source is None or ts < source:
                        source = ts
                    at = c.appended_ms
                    if at and (appended is None or at < appended):
                        appended = at
            if source is not None:
                latencies.append(max(0, now_ms - source))
                if appended is not None:
                    own.append(max(0, now_ms - appended))
        return latencies, own
