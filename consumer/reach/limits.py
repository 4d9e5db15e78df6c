"""Client-side rate limits for Reach: token buckets that Reach's own 429s tighten further.

Reach publishes no limits (docs/reach-api.md §7 Q11): the definition sets them, and 429s tighten
them. ``ReachClient`` calls ``before_request`` before every request and ``after_response`` after
every answer, and knows nothing else about limits. A request waits, in order, for its tenant's
pause (after a 429), its tenant's bucket, the process bucket and the process's share of the
group bucket (``group_share.GroupShare``). A 429 halves the throttled scope's rate, at most once
a second; successes win it back (AIMD). A slowed request costs more tokens, so a bucket is never
rebuilt. Why: docs/design.md, "The Reach client"; operators: docs/operations.md, "Rate limits".
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from aiolimiter import AsyncLimiter

from consumer.config import RateLimit, SyncDefinition
from consumer.observe.metrics import NO_INSTRUMENTS, Instruments
from consumer.reach.classify import retry_after_seconds
from consumer.reach.client import RequestInfo
from consumer.reach.group_share import GroupShare, group_key

__all__ = ["RequestLimiter", "Share", "open_limiter"]

log = logging.getLogger(__name__)

DECREASE = 0.5  # a 429 halves the throttled scope's rate
MIN_SCALE = 1 / 32  # ... down to this fraction of the configured rate, never to zero
DECREASE_COOLDOWN_S = 1.0
RECOVERY_PER_S = 0.1  # fraction of the configured rate regained per second of successes
# 429s from two tenants within this window: the credential's limit, not a tenant's.
SPREAD_WINDOW_S = 1.0
# A Retry-After longer than this is obeyed only this long: a bogus header must not freeze a
# tenant for a day; the next 429 pauses again.
MAX_PAUSE_S = 300.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Share(Protocol):
    """How many ways the group total is split now (``GroupShare`` keeps it current)."""

    @property
    def divisor(self) -> int: ...


class _Bucket:
    """An aiolimiter bucket at its configured rate and burst; ``take(cost)`` spends ``cost``
    tokens, in steps no larger than the burst (aiolimiter refuses more at once).

    One request takes its steps alone (the lock, which is FIFO): if requests interleaved their
    steps, all would finish together, in bursts at the bucket's full rate, although the average
    was right.
    """

    __slots__ = ("_capacity", "_limiter", "_lock")

    def __init__(self, rate: float, burst: int) -> None:
        self._capacity = float(burst)
        self._limiter = AsyncLimiter(burst, burst / rate)
        self._lock = asyncio.Lock()

    async def take(self, cost: float) -> None:
        steps = max(1, math.ceil(cost / self._capacity))
        step = min(self._capacity, cost / steps)
        async with self._lock:
            for _ in range(steps):
                await self._limiter.acquire(step)


@dataclass(slots=True)
class _Adaptive:
    """How Reach's answers slow one scope (a tenant, or the credential): a pause until
    Retry-After and a ``scale`` of the configured rate, halved on 429, regained on success."""

    scale: float = 1.0
    paused_until: float = 0.0
    _decreased_at: float = -math.inf
    _grown_at: float = 0.0

    def throttled(self, now: float, wait: float | None) -> bool:
        """Note a 429; True when it lowered the rate (the first of a cooldown)."""
        if wait is not None:
            self.paused_until = max(self.paused_until, now + min(wait, MAX_PAUSE_S))
        self._grown_at = max(now, self.paused_until)  # time paused earns no recovery
        if now - self._decreased_at < DECREASE_COOLDOWN_S:
            return False
        self._decreased_at = now
        self.scale = max(MIN_SCALE, self.scale * DECREASE)
        return True

    def succeeded(self, now: float) -> None:
        if self.scale < 1.0:
            gained = max(0.0, now - self._grown_at) * RECOVERY_PER_S
            self.scale = min(1.0, self.scale + gained)
        self._grown_at = max(self._grown_at, now)


@dataclass(slots=True)
class _Tenant:
    bucket: _Bucket | None
    rate: float | None  # configured requests/s of ``bucket``
    adaptive: _Adaptive = field(default_factory=_Adaptive)


class RequestLimiter:
    """Every limit of one process; pass ``before_request`` and ``after_response`` to the client.

    Shared by every partition of the process (one event loop). ``group`` is this process's
    share of the group limit; ``clock`` and ``sleep`` are the test seams for pauses.
    """

    def __init__(
        self,
        settings: RateLimit | None,
        *,
        group: Share | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self._settings = settings
        self._instruments = instruments
        self._clock = clock
        self._sleep = sleep
        self._credential = _Adaptive()
        self._tenants: dict[str, _Tenant] = {}
        self._throttled_at: dict[str, float] = {}  # tenant -> its last 429, for the spread
        self._process: _Bucket | None = None
        self._group_bucket: _Bucket | None = None
        self._group = group
        if settings is not None and settings.requests_per_s is not None:
            self._process = _Bucket(settings.requests_per_s, settings.burst or 1)
        if settings is not None and settings.group_requests_per_s is not None:
            if group is None:
                raise ValueError("group_requests_per_s needs a GroupShare")
            # The group bucket at the whole total; a request costs ``divisor`` tokens of it,
            # so the group's burst is shared like its rate.
            self._group_bucket = _Bucket(settings.group_requests_per_s, settings.burst or 1)

    # --- the client's seams ----------------------------------------------------------------------

    async def before_request(self, info: RequestInfo) -> None:
        """Return when ``info``'s request may go: after any pause, with a token of each bucket.

        A pause that began while the request waited for tokens is waited for too, and tokens
        are taken again (spending more than needed is the safe side).
        """
        tenant = self._tenant(info.tenant)
        started = self._clock()
        while True:
            await self._wait_pause(tenant)
            if tenant.bucket is not None:
                await tenant.bucket.take(1.0 / tenant.adaptive.scale)
            if self._process is not None:
                await self._process.take(1.0 / self._credential.scale)
            if self._group_bucket is not None and self._group is not None:
                await self._group_bucket.take(self._group.divisor / self._credential.scale)
            if self._pause_left(tenant) <= 0:
                self._instruments.rate_limit_waited(self._clock() - started)  # counts waits only
                return

    def after_response(self, info: RequestInfo, response: httpx.Response) -> None:
        """A 429 pauses and slows its tenant (or the credential); a success lets them recover."""
        now = self._clock()
        tenant = self._tenant(info.tenant)
        if response.status_code == 429:
            wait = retry_after_seconds(response.headers.get("retry-after"))
            self._on_throttled(info.tenant, tenant, now, wait)
        elif response.is_success:
            tenant.adaptive.succeeded(now)
            self._credential.succeeded(now)

    # --- what it is doing, for tests and the live view -------------------------------------------

    def tenant_rate(self, tenant: str) -> float | None:
        """The tenant bucket's current requests/s (None: no bucket, unlimited)."""
        state = self._tenant(tenant)
        return None if state.rate is None else state.rate * state.adaptive.scale

    def process_rate(self) -> float | None:
        rate = self._settings.requests_per_s if self._settings else None
        return None if rate is None else rate * self._credential.scale

    def group_rate(self) -> float | None:
        """This process's share of the group limit, as requests/s."""
        total = self._settings.group_requests_per_s if self._settings else None
        if total is None or self._group is None:
            return None
        return total * self._credential.scale / self._group.divisor

    def paused_for(self, tenant: str) -> float:
        """Seconds ``tenant`` must still wait before sending (0: none)."""
        return max(0.0, self._pause_left(self._tenant(tenant)))

    # --- plumbing --------------------------------------------------------------------------------

    def _tenant(self, name: str) -> _Tenant:
        found = self._tenants.get(name)
        if found is None:
            found = self._tenants[name] = self._new_tenant()
        return found

    def _new_tenant(self) -> _Tenant:
        """A tenant's bucket runs at ``per_tenant_requests_per_s``. Without it, at the tightest
        process rate, where it binds only once a 429 has slowed this tenant alone."""
        settings = self._settings
        if settings is None:
            return _Tenant(None, None)
        if settings.per_tenant_requests_per_s is not None:
            rate = settings.per_tenant_requests_per_s
            return _Tenant(_Bucket(rate, settings.per_tenant_burst or 1), rate)
        rates = [r for r in (settings.requests_per_s, settings.group_requests_per_s) if r]
        if not rates:
            return _Tenant(None, None)
        return _Tenant(_Bucket(min(rates), settings.burst or 1), min(rates))

    def _pause_left(self, tenant: _Tenant) -> float:
        until = max(tenant.adaptive.paused_until, self._credential.paused_until)
        return until - self._clock()

    async def _wait_pause(self, tenant: _Tenant) -> None:
        while (left := self._pause_left(tenant)) > 0:
            await self._sleep(left)

    def _on_throttled(self, name: str, tenant: _Tenant, now: float, wait: float | None) -> None:
        if tenant.adaptive.throttled(now, wait):
            log.warning(
                "Reach answered 429 for tenant %s: pausing %.1f s, its rate now %.0f %%",
                name,
                max(0.0, tenant.adaptive.paused_until - now),
                tenant.adaptive.scale * 100,
            )
        self._throttled_at[name] = now
        for other, at in list(self._throttled_at.items()):
            if now - at > SPREAD_WINDOW_S:
                del self._throttled_at[other]
        if len(self._throttled_at) < 2:
            return
        # Every tenant waits as long as the longest Retry-After of the tenants just refused.
        until = max(self._tenants[t].adaptive.paused_until for t in self._throttled_at)
        if self._credential.throttled(now, until - now if until > now else None):
            log.warning(
                "Reach answered 429 for %d tenants at once: the credential is throttled; "
                "pausing every tenant %.1f s, the process rate now %.0f %%",
                len(self._throttled_at),
                max(0.0, self._credential.paused_until - now),
                self._credential.scale * 100,
            )


@asynccontextmanager
async def open_limiter(
    definition: SyncDefinition, instruments: Instruments = NO_INSTRUMENTS
) -> AsyncIterator[RequestLimiter]:
    """The limiter of ``definition``, with its group membership in Redis while it runs.

    Always a limiter: even with no limits configured, a 429's Retry-After pauses its tenant.
    """
    settings = definition.destination.rate_limit
    group = None
    if settings is not None and settings.group_requests_per_s is not None:
        group = GroupShare(
            definition.redis.url.get_secret_value(),
            group_key(definition.redis.key_prefix, definition.source.kafka.group_id),
            max_members=definition.topics.dirty_partitions,
        )
        await group.start()
    try:
        yield RequestLimiter(settings, group=group, instruments=instruments)
    finally:
        if group is not None:
            await group.close()
