"""Re-sync: bring Reach up to a changed definition, by backfilling exactly what changed.

``run`` compares each resource's fingerprint with the one Reach was last brought up to
(fingerprint.py). With ``resync: auto`` it walks each changed resource into the dirty topic
(a backfill of kind ``resync``), and stores the new fingerprint once every entity was made
dirty; dedup still skips every record whose payload did not change, so a new field re-sends
everything and a changed group rule only the entities whose membership moved. When the Reach
schema changed, each page is put in doubt first, since an unchanged payload must now reach
another schema. One process of the group does it at a time (a Redis lock); the others check
again every ``CHECK_INTERVAL_S``, so a process that dies mid-resync is taken over.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from consumer.backfill.checkpoint import CheckpointStore
from consumer.backfill.emit import DirtyWriter
from consumer.backfill.fingerprint import Change, FingerprintStore, changes
from consumer.backfill.run import (
    BackfillOptions,
    BackfillReport,
    BeforePage,
    Observer,
    Parts,
    run_backfill,
)
from consumer.backfill.scope import BackfillScope
from consumer.backfill.syncer_position import SyncerPosition
from consumer.config import SyncDefinition
from consumer.errors import SyncError
from consumer.redis_lock import RedisLock
from consumer.router.dirty import EntityId
from consumer.router.topics import ensure_topics
from consumer.sink.dedup import LastSentStore

__all__ = ["CHECK_INTERVAL_S", "Resyncer", "run_resyncs"]

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 60.0
# The lock outlives a silent holder by this much; renewed with every page.
LOCK_TTL_MS = 120_000


@dataclass
class Resyncer:
    """Re-syncs changed resources with the parts it is given; ``run`` and ``reach-sync resync``
    both use it."""

    definition: SyncDefinition
    redis: Redis
    last_sent: LastSentStore
    writer: DirtyWriter
    position: SyncerPosition

    def _lock_key(self, resource: str) -> str:
        return f"{self.definition.redis.key_prefix}:resync-lock:{resource}"

    async def resync(
        self,
        change: Change,
        stop: threading.Event,
        options: BackfillOptions,
        observer: Observer | None = None,
    ) -> BackfillReport | None:
        """Walk the resource and store its new fingerprint; None if another process holds the
        lock (it does the work)."""
        scope = BackfillScope.of(
            self.definition,
            "resync",
            (change.resource,),
            fingerprints=((change.resource, change.fingerprint),),
        )
        lock = RedisLock(self.redis, self._lock_key(change.resource), LOCK_TTL_MS, "resync lock")
        if not await lock.take():
            log.info("another process is re-syncing %s", change.resource)
            return None
        async with lock.renewed():
            return await self._walk(change, scope, stop, options, observer)

    async def _walk(
        self,
        change: Change,
        scope: BackfillScope,
        stop: threading.Event,
        options: BackfillOptions,
        observer: Observer | None,
    ) -> BackfillReport:
        parts = Parts(
            CheckpointStore(self.redis, self.definition.redis.key_prefix),
            self.writer,
            self.position,
            before_page=self._before_page(change),
        )
        report = await run_backfill(self.definition, scope, parts, options, stop, observer)
        if not report.stopped:
            await FingerprintStore(self.redis, self.definition.redis.key_prefix).store(
                change.resource, change.new
            )
            log.info(
                "re-synced %s: %d entities made dirty; fingerprint %s stored",
                change.resource,
                report.checkpoint.keys,
                change.fingerprint,
            )
        return report

    def _before_page(self, change: Change) -> BeforePage | None:
        """With a new Reach schema, each page is put in doubt before it is made dirty, so dedup
        sends unchanged payloads to the new schema too."""
        if not change.moves_schema:
            return None

        async def before(resource: str, ids: Sequence[EntityId]) -> None:
            await self.last_sent.put_in_doubt(resource, ids)

        return before


async def run_resyncs(definition: SyncDefinition, stop: threading.Event) -> None:
    """``run``'s resync: until no resource differs from its fingerprint, or ``stop``."""
    redis: Redis = Redis.from_url(definition.redis.url.get_secret_value())
    last_sent = LastSentStore(definition.redis.url.get_secret_value(), definition.redis.key_prefix)
    writer = DirtyWriter(definition)
    position = SyncerPosition(definition)
    resyncer = Resyncer(definition, redis, last_sent, writer, position)
    told = False
    try:
        while not stop.is_set():
            try:
                found = await changes(
                    definition, FingerprintStore(redis, definition.redis.key_prefix)
                )
                if not found:
                    return
                if definition.resync == "manual":
                    if not told:
                        log.warning(
                            "the definition changed since these resources were sent: %s; "
                            "resync: manual, so run `reach-sync resync --resource <name>`",
                            ", ".join(c.describe() for c in found),
                        )
                        told = True
                else:
                    log.warning(
                        "the definition changed since these resources were sent: %s; "
                        "re-syncing them",
                        ", ".join(c.describe() for c in found),
                    )
                    # Dirty keys must never auto-create the topic with the broker's defaults.
                    await asyncio.to_thread(ensure_topics, definition)
                    for change in found:
                        await resyncer.resync(change, stop, BackfillOptions(wait=False))
            except SyncError as exc:
                log.warning("resync not done, trying again: %s", exc)
            await asyncio.to_thread(stop.wait, CHECK_INTERVAL_S)
    finally:
        writer.close()
        position.close()
        await last_sent.close()
        await redis.aclose()
