"""A Redis lock that one process of the group holds while it does a job (a resync, a scheduled
run): ``SET NX PX`` with a token of its own, renewed every third of its lifetime while the job
runs, released only by its holder, and given up on expiry if the holder dies.

A renewal that finds the key gone or someone else's marks the lock ``lost``: the holder must stop
before its next step, since another process may have started the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from consumer.errors import Retryable

__all__ = ["RedisLock"]

log = logging.getLogger(__name__)

# Renews (sets a new expiry) and deletes only while the lock still holds this holder's token:
# it may have expired and been taken by another process meanwhile.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class RedisLock:
    def __init__(self, redis: Redis, key: str, ttl_ms: int, what: str) -> None:
        self._redis = redis
        self._key = key
        self._ttl_ms = ttl_ms
        self._what = what  # for messages: "resync lock", "scheduled run lock"
        self._token = uuid.uuid4().hex
        self.lost = False

    async def take(self) -> bool:
        try:
            return bool(await self._redis.set(self._key, self._token, nx=True, px=self._ttl_ms))
        except (RedisError, OSError) as exc:
            raise Retryable(f"{self._what} unavailable (Redis): {exc}") from exc

    async def keep(self) -> None:
        """Renew until cancelled; past its lifetime without a renewal, or once another holder
        has it, the lock is ``lost``."""
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                ours = await self._redis.eval(_RENEW, 1, self._key, self._token, self._ttl_ms)
            except (RedisError, OSError) as exc:
                log.warning("%s not renewed (Redis): %s", self._what, exc)
                if loop.time() - renewed_at > self._ttl_ms / 1000:
                    self.lost = True
                continue
            if not ours:
                self.lost = True
                log.error("%s %s was lost: another process may hold it", self._what, self._key)
                return
            renewed_at = loop.time()

    async def release(self) -> None:
        try:
            await self._redis.eval(_RELEASE, 1, self._key, self._token)
        except (RedisError, OSError):
            log.warning("%s %s not released; it expires", self._what, self._key)

    @contextlib.asynccontextmanager
    async def renewed(self) -> AsyncIterator[RedisLock]:
        """Held (taken already) for the block: renewed while it runs, released after. Not a
        TaskGroup: it would wrap the block's own errors in an ExceptionGroup."""
        renewing = asyncio.create_task(self.keep())
        try:
            yield self
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await self.release()
