"""The last-sent store: what Reach already has, so unchanged records are not sent again.

Per (resource, entity id) it keeps the tenant (a delete needs it) and the hash of the last record
Reach accepted. An optimisation, never a source of truth: a hash is written only after Reach
accepted, and without Redis every lookup answers "unknown": re-sent, never skipped. Before a
send whose outcome could be ambiguous the entry is put *in doubt* (hash emptied, tenant kept),
and that must succeed first. While Redis is away, unconfirmed writes are *owed* (in this process,
``OWED_MAX`` at most) and put in doubt before anything else once it is back. A window's reads
and writes are one command each. The long story: docs/design.md, "Ambiguous sends".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consumer.errors import Retryable
from consumer.observe.telemetry import instrument_redis
from consumer.router.dirty import EntityId

__all__ = ["LastSent", "LastSentStore"]

log = logging.getLogger(__name__)

# A dedup lookup must never hold a window up for long: past this, send without it.
REDIS_TIMEOUT_S = 2.0
# Empties the hash of each existing entry, keeping its tenant, in one atomic round trip; a
# missing entry stays missing (it claims nothing).
_DOUBT = """
for _, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value then
    local tenant = string.match(value, '^([^\\n]*)')
    redis.call('SET', key, tenant .. '\\n')
  end
end
return 0
"""
_OWED_DOUBT = "doubt"
# Owed writes kept while Redis is away (module docstring): about 25 MB at this many keys; past
# it an outage's oldest owed entries are dropped, with an error logged once.
OWED_MAX = 100_000


@dataclass(frozen=True, slots=True)
class LastSent:
    """What Reach holds of an entity: its tenant, and the hash of the record it accepted (empty:
    in doubt, Reach may hold any state; the tenant is still where a delete must go)."""

    tenant: str
    hash: str


class LastSentStore:
    """Keys ``<prefix>:last:<resource>:<id>`` → ``<tenant>\\n<hash>``; all key names live here."""

    def __init__(self, url: str, prefix: str) -> None:
        self._prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        instrument_redis(self._redis)  # a span per command, when tracing is on
        self.available = True
        # Key -> what it must become once Redis answers: in doubt, or None (removed).
        self._owed: dict[str, str | None] = {}
        self._owed_dropped = 0

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
            await self._pay_owed()
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
        self, resource: str, ids: Iterable[EntityId], *, required: bool = True
    ) -> None:
        """Before a send: these entities' entries stop claiming a state (their tenants are kept;
        a missing entry stays missing). Raises Retryable when Redis does not confirm and
        ``required``: nothing is sent while an entry could still claim a state Reach may no
        longer hold. Not ``required`` (the store was away for the lookup already), it is owed."""
        keys = [self._key(resource, i) for i in ids]
        if not keys:
            return
        try:
            await self._pay_owed()
            await self._doubt(keys)
        except (RedisError, OSError) as exc:
            self._mark(False, "write", exc)
            self._owe_doubt(keys)
            if required:
                raise Retryable("the dedup store could not put entries in doubt") from exc
            return
        self._mark(True, "write")

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
            await self._pay_owed()
            await self._execute(entries, gone)
        except (RedisError, OSError) as exc:
            self._mark(False, "write", exc)
            self._owe(entries, gone)
            return False
        self._mark(True, "write")
        return True

    async def _execute(self, entries: dict[str, str], gone: Sequence[str]) -> None:
        if not entries and not gone:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            if entries:
                pipe.mset(entries)
            if gone:
                pipe.unlink(*gone)
            await pipe.execute()

    async def _doubt(self, keys: list[str]) -> None:
        await self._redis.eval(_DOUBT, len(keys), *keys)

    def _owe(self, entries: dict[str, str], gone: Sequence[str]) -> None:
        """Remember writes Redis did not confirm, as doubts (or removals): never as a hash,
        since another owner may have written a newer one by the time they are paid."""
        self._owe_doubt(list(entries))
        for key in gone:
            self._owed.pop(key, None)
            self._owed[key] = None
        self._bound_owed()

    def _owe_doubt(self, keys: list[str]) -> None:
        for key in keys:
            self._owed.pop(key, None)
            self._owed[key] = _OWED_DOUBT
        self._bound_owed()

    def _bound_owed(self) -> None:
        while len(self._owed) > OWED_MAX:
            self._owed.pop(next(iter(self._owed)))
            self._owed_dropped += 1
            if self._owed_dropped == 1:
                log.error(
                    "dedup store away for more than %d writes; older entries may claim a state"
                    " Reach no longer holds until they are sent again",
                    OWED_MAX,
                )

    async def _pay_owed(self) -> None:
        """Write what earlier failures owe before anything else; raises while Redis is away."""
        if not self._owed:
            return
        owed = dict(self._owed)
        doubts = [k for k, v in owed.items() if v is not None]
        if doubts:
            await self._doubt(doubts)
        await self._execute({}, [k for k, v in owed.items() if v is None])
        for key, value in owed.items():
            if self._owed.get(key, value) == value:
                self._owed.pop(key, None)
        log.warning("dedup store: %d entries owed during its outage put in doubt", len(owed))
