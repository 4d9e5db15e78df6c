"""The last-sent store: what Reach already has, so unchanged records are not sent again.

Per (resource, entity id) it keeps the tenant and the hash of the last record Reach accepted.
It is an optimisation, never a source of truth: a hash is written only after Reach accepted, and
when Redis cannot be reached every lookup answers "unknown", so records are re-sent, never
skipped. Before a send whose outcome could be ambiguous (a 5xx after Reach applied it, a batch
whose status cannot be read) the entity's entry is put *in doubt* (its hash emptied, its tenant
kept): if the send's outcome is never learned and the entity goes back to the state the entry
held, the retry sends it instead of skipping it. That write must succeed before the send.

Reads and writes of a window are one command each (MGET; MSET and UNLINK), never per key: one
round trip, and one reply to parse instead of one per key.

The tenant is kept beside the hash because a deleted entity has no row left to tell its tenant,
and Reach's delete needs one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consumer.dirty import EntityId
from consumer.errors import Retryable
from consumer.telemetry import instrument_redis

__all__ = ["LastSent", "LastSentStore"]

log = logging.getLogger(__name__)

# A dedup lookup must never hold a window up for long: past this, send without it.
REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class LastSent:
    """What Reach holds of an entity: its tenant, and the hash of the record it accepted (empty:
    in doubt, Reach may hold any state; the tenant is still where a delete must go)."""

    tenant: str
    hash: str

    @property
    def in_doubt(self) -> bool:
        return not self.hash

    def doubted(self) -> LastSent:
        return LastSent(self.tenant, "")


class LastSentStore:
    """Keys ``<prefix>:last:<resource>:<id>`` → ``<tenant>\\n<hash>``; all key names live here."""

    def __init__(self, url: str, prefix: str) -> None:
        self._prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        instrument_redis(self._redis)  # a span per command, when tracing is on
        self.available = True

    def _key(self, resource: str, entity_id: EntityId) -> str:
        return f"{self._prefix}:last:{resource}:{entity_id}"

    def _mark(self, ok: bool, action: str, exc: Exception | None = None) -> None:
        if ok and not self.available:
            log.warning("dedup store reachable again; deduplicating sends again")
        elif not ok and self.available:
            log.warning(
                "dedup store unavailable (%s: %s); sending without dedup",
                action,
                type(exc).__name__,
            )
        self.available = ok

    async def close(self) -> None:
        await self._redis.aclose()

    async def get_many(self, resource: str, ids: Sequence[EntityId]) -> dict[str, LastSent] | None:
        """Last-sent entries by str(id); None when the store cannot answer (send everything)."""
        if not ids:
            return {}
        try:
            values = await self._redis.mget([self._key(resource, i) for i in ids])
        except (RedisError, OSError) as exc:
            self._mark(False, "read", exc)
            return None
        self._mark(True, "read")
        found: dict[str, LastSent] = {}
        for entity_id, raw in zip(ids, values, strict=True):
            if raw:
                text = raw.decode() if isinstance(raw, bytes) else raw
                tenant, _, digest = text.partition("\n")
                found[str(entity_id)] = LastSent(tenant=tenant, hash=digest)
        return found

    async def record_sent(self, resource: str, sent: Iterable[tuple[EntityId, LastSent]]) -> None:
        """Remember what Reach accepted. A failure only costs re-sends later, so it is logged."""
        await self._write(resource, sent, forget=())

    async def put_in_doubt(
        self, resource: str, entries: Iterable[tuple[EntityId, LastSent]]
    ) -> None:
        """Before a send: these entities' entries no longer claim a state (tenants kept). Raises
        Retryable when Redis does not confirm, so that nothing is sent while an entry could
        still claim a state Reach may no longer hold."""
        doubted = [(i, e.doubted()) for i, e in entries if not e.in_doubt]
        if doubted and not await self._write(resource, doubted, forget=()):
            raise Retryable("the dedup store could not put entries in doubt before a send")

    async def forget(self, resource: str, ids: Iterable[EntityId]) -> None:
        """After a delete: the entity is gone from Reach, so a re-created one is sent again."""
        await self._write(resource, (), forget=ids)

    async def _write(
        self,
        resource: str,
        sent: Iterable[tuple[EntityId, LastSent]],
        forget: Iterable[EntityId],
    ) -> bool:
        """One MSET and UNLINK; whether Redis confirmed it (nothing to write: True)."""
        entries = {self._key(resource, i): f"{e.tenant}\n{e.hash}" for i, e in sent}
        gone = [self._key(resource, i) for i in forget]
        if not entries and not gone:
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                if entries:
                    pipe.mset(entries)
                if gone:
                    pipe.unlink(*gone)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._mark(False, "write", exc)
            return False
        self._mark(True, "write")
        return True
