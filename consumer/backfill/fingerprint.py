"""A resource's definition, fingerprinted, so that ``run`` notices when it changed.

What a resource sends is decided by its query, key, tenant column, mapping (formats and PII
policy included), groups and Reach schema; a change to any of them can change what Reach
should hold for entities that did not change at all, and nothing would re-send them until each
happened to change. Each part is hashed on its own, so ``run`` can say what changed. Triggers,
delivery and audit settings change nothing that was sent and are left out.

The fingerprints of what Reach holds live in Redis beside the last-sent hashes, under
``<prefix>:fingerprint:<resource>``, and move to the new one once a resync has made every entity
of the resource dirty (resync.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from consumer.config import Resource, SyncDefinition
from consumer.errors import Retryable

__all__ = ["Change", "FingerprintStore", "changes", "fingerprint", "parts_of"]

PARTS = ("query", "key", "tenant", "mapping", "groups", "reach_schema")


def parts_of(resource: Resource) -> dict[str, str]:
    """Each part's hash (12 hex digits: it tells parts apart, it is no secret)."""
    dumped = resource.model_dump(mode="json", include=set(PARTS))
    return {
        part: hashlib.sha256(json.dumps(dumped.get(part), sort_keys=True).encode()).hexdigest()[:12]
        for part in PARTS
    }


def fingerprint(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Change:
    resource: str
    parts: tuple[str, ...]  # what changed, in PARTS order
    new: dict[str, str]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.new)

    @property
    def moves_schema(self) -> bool:
        """Records now go to another Reach schema: unchanged payloads must be sent too."""
        return "reach_schema" in self.parts

    def describe(self) -> str:
        return f"{self.resource} ({', '.join(self.parts)})"


class FingerprintStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, resource: str) -> str:
        return f"{self._prefix}:fingerprint:{resource}"

    async def held(self, resources: list[str]) -> dict[str, dict[str, str] | None]:
        try:
            values = await self._redis.mget([self._key(r) for r in resources])
        except (RedisError, OSError) as exc:
            raise Retryable(f"definition fingerprints unreadable (Redis): {exc}") from exc
        held: dict[str, dict[str, str] | None] = {}
        for resource, raw in zip(resources, values, strict=True):
            held[resource] = None if raw is None else json.loads(raw)
        return held

    async def store(self, resource: str, parts: dict[str, str]) -> None:
        try:
            await self._redis.set(self._key(resource), json.dumps(parts, sort_keys=True))
        except (RedisError, OSError) as exc:
            raise Retryable(f"definition fingerprint not stored (Redis): {exc}") from exc


async def changes(definition: SyncDefinition, store: FingerprintStore) -> list[Change]:
    """Resources whose definition differs from what Reach was last brought up to. A resource
    with no fingerprint yet (a first run) gets the current one and is not a change: its history
    comes from the initial snapshot or a backfill."""
    names = list(definition.resources)
    held = await store.held(names)
    found = []
    for name in names:
        current = parts_of(definition.resources[name])
        before = held[name]
        if before is None:
            await store.store(name, current)
        elif before != current:
            changed = tuple(p for p in PARTS if before.get(p) != current[p])
            found.append(Change(name, changed, current))
    return found
