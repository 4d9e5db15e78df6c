"""This process's share of its consumer group's Reach rate limit, agreed through Redis.

A group limit only holds if every process knows how many others send: N processes each sending
the whole total would send N times it. So each process keeps a heartbeat in one sorted set
(member → Redis server time of its last beat), counts the members whose beat is younger than a
TTL, and takes ``1 / count`` of the total. A process that dies stops counting once its beat is
older than the TTL; one that stops cleanly leaves at once, so the others speed up sooner.

The divisor is also capped by ``max_members``, the most processes that can have work (a syncer
without dirty-topic partitions sends nothing), which is the safe share before Redis has ever
answered. When Redis fails, the last share is kept: never unlimited, never a guess upwards.
Until the next refresh after a process joins, the others still use their older, larger share:
the group may exceed its total by one newcomer's share for at most ``refresh_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["GroupShare", "group_key"]

log = logging.getLogger(__name__)

REFRESH_S = 2.0
# Five missed beats before a member is counted dead: a busy event loop is not a dead process.
TTL_S = 10.0
REDIS_TIMEOUT_S = 2.0

# One round trip, and the server's clock for every member, so hosts' clock skew cannot make a
# live member look dead. The key expires when every member has gone.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
"""


def group_key(prefix: str, group_id: str) -> str:
    """The sorted set of one consumer group's members; every key name of this module."""
    return f"{prefix}:ratelimit:{group_id}:members"


def _member_name() -> str:
    """Unique per process, readable by a person inspecting Redis (host and pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class GroupShare:
    """Membership with a heartbeat; ``divisor`` is how many ways the group total is split.

    ``start`` beats once (awaited, so the first requests already use a counted share) and then
    every ``refresh_s`` in a background task; ``close`` stops it and leaves the set.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        max_members: int,
        refresh_s: float = REFRESH_S,
        ttl_s: float = TTL_S,
        member: str | None = None,
    ) -> None:
        if max_members < 1 or refresh_s <= 0 or ttl_s <= refresh_s:
            raise ValueError("need max_members >= 1 and ttl_s > refresh_s > 0")
        self._key = key
        self._max_members = max_members
        self._refresh_s = refresh_s
        self._ttl_ms = int(ttl_s * 1000)
        self.member = member or _member_name()
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._beat = self._redis.register_script(_BEAT)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.live: int | None = None  # members counted at the last good refresh
        self.divisor = max_members  # safe before Redis ever answered
        self._healthy = True

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="rate-limit-group-share")

    async def close(self) -> None:
        # The flag as well as the cancel: a cancel that lands while a Redis call is timing out
        # can come back as redis' TimeoutError, which refresh() handles, and the loop would go on.
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._redis.zrem(self._key, self.member)
        except (RedisError, OSError) as exc:
            log.warning("could not leave the rate-limit group (%s); it expires", type(exc).__name__)
        await self._redis.aclose()

    async def refresh(self) -> None:
        """Beat and count; on a Redis error keep the last divisor and say so once."""
        try:
            live = int(await self._beat(keys=[self._key], args=[self.member, self._ttl_ms]))
        except (RedisError, OSError) as exc:
            if self._healthy:
                log.warning(
                    "rate-limit group unavailable (%s); keeping a 1/%d share",
                    type(exc).__name__,
                    self.divisor,
                )
            self._healthy = False
            return
        if not self._healthy:
            log.warning("rate-limit group reachable again")
        self._healthy = True
        divisor = max(1, min(live, self._max_members))
        if divisor != self.divisor:
            log.info("rate-limit group: %d live members, a 1/%d share", live, divisor)
        self.live, self.divisor = live, divisor

    async def _run(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._refresh_s)
            if not self._closing:
                await self.refresh()
