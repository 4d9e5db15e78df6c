"""Rate limits against the real sandbox and a real Redis: what the sandbox saw, counted.

The sandbox's request log (arrival times) is the measure: a 429 storm must slow the client to
about the sandbox's own limit, and two limiters sharing one group limit through Redis must
together stay within it. Every bound below is an upper bound with a stated margin, over windows
of a second or more: this is a shared, noisy 2-core machine, so nothing asserts a minimum speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from reach_devstack import redis as redis_component
from reach_devstack.process import ManagedProcess, free_port, wait_until
from reach_sandbox.config import RateLimitConfig, RateLimitsConfig
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxFactory,
    SandboxServer,
    sandbox_config,
)

from consumer.config import Auth, Destination, RateLimit
from consumer.errors import Retryable
from consumer.reach.client import ReachClient
from consumer.reach.group_share import GroupShare, group_key
from consumer.reach.limits import RequestLimiter, open_limiter
from tests.shop_definition import shop_definition

MAX_ATTEMPTS = 200  # per record: a bound on a broken limiter, never reached by a working one


@pytest.fixture
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    servers = SandboxFactory(tmp_path_factory.mktemp("rate-limits"))
    try:
        yield servers
    finally:
        servers.close()


def reach(sandbox: SandboxServer, limiter: RequestLimiter) -> ReachClient:
    auth = Auth(mode="jwt", partner_id=PARTNER_ID, secret=SecretStr(PARTNER_SECRET))
    return ReachClient(
        Destination(base_url=sandbox.base_url, auth=auth),
        before_request=limiter.before_request,
        after_response=limiter.after_response,
    )


async def send_all(api: ReachClient, tenant: str, count: int, workers: int) -> int:
    """Upsert ``count`` customers from ``workers`` concurrent senders, each retrying at once on
    a Retryable (as eagerly as possible: only the limiter holds them back); the attempts."""
    queue = [f"c{n}" for n in range(count)]
    attempts = 0

    async def worker() -> None:
        nonlocal attempts
        while queue:
            external_id = queue.pop()
            for _ in range(MAX_ATTEMPTS):
                attempts += 1
                try:
                    record = {"customerId": external_id, "email": f"{external_id}@example.com"}
                    await api.upsert_one(tenant, "customers", record, external_id=external_id)
                    break
                except Retryable:
                    continue
            else:
                raise AssertionError(f"{external_id} never landed")

    await asyncio.gather(*(worker() for _ in range(workers)))
    return attempts


def logged(sandbox: SandboxServer, tenant: str) -> list[dict[str, Any]]:
    """The sandbox's log of the tenant's API requests, in arrival order."""
    with sandbox.admin() as admin:
        response = admin.get(
            "/_admin/requests", params={"tenant": tenant, "pathPrefix": "/api/", "limit": 10000}
        )
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["requests"]
    return rows


def stored_count(sandbox: SandboxServer, tenant: str) -> int:
    with sandbox.admin() as admin:
        response = admin.get(
            "/_admin/resources", params={"tenant": tenant, "schema": "customers", "limit": 1}
        )
    response.raise_for_status()
    total: int = response.json()["total"]
    return total


def busiest(times: list[float], window_s: float) -> int:
    """The most arrivals in any window of ``window_s`` seconds (sliding, from each arrival)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


# --- a 429 storm ---------------------------------------------------------------------------------

SANDBOX_RATE = 4.0  # the sandbox's per-tenant bucket: 4/s, burst 4
SANDBOX_BURST = 4
STORM_RETRY_AFTER_S = 2


async def test_a_429_storm_slows_the_sender_to_the_sandboxs_limit(
    factory: SandboxFactory,
) -> None:
    limits = RateLimitsConfig(
        per_tenant=RateLimitConfig(rate_per_second=SANDBOX_RATE, burst=SANDBOX_BURST)
    )
    sandbox = factory.start(sandbox_config(rate_limits=limits))
    tenant = sandbox.new_tenant()
    sandbox.add_fault(
        kind="rate_limit", retry_after_seconds=STORM_RETRY_AFTER_S, tenant=tenant, count=2
    )
    # The client believes in 4 times the sandbox's rate: only the 429s can teach it better.
    limiter = RequestLimiter(RateLimit(per_tenant_requests_per_s=4 * SANDBOX_RATE))
    async with reach(sandbox, limiter) as api:
        attempts = await send_all(api, tenant, count=24, workers=8)

    rows = logged(sandbox, tenant)
    times = [row["at"] for row in rows]
    refused = [row for row in rows if row["status"] == 429]
    assert stored_count(sandbox, tenant) == 24  # every record landed
    assert len(rows) == attempts
    # The most the sandbox accepts in any second is its rate plus its burst; the client may
    # overshoot that by what it learns from (2 more requests), never by its own 16/s.
    assert busiest(times, 1.0) <= SANDBOX_RATE + SANDBOX_BURST + 2
    # Retrying at once, unlimited, 8 senders would be refused hundreds of times.
    assert len(refused) <= 12
    # The storm's first 429 paused the tenant for its Retry-After: only requests already in
    # flight may arrive in the first half second after it, none after that until it ends.
    first = refused[0]["at"]
    assert not [t for t in times if first + 0.5 < t < first + STORM_RETRY_AFTER_S - 0.1]


# --- one group limit, two processes --------------------------------------------------------------

GROUP_RATE = 10.0


async def test_two_processes_share_one_group_limit(
    factory: SandboxFactory, redis_url: str, unique: Callable[[str], str]
) -> None:
    sandbox = factory.start()
    key = group_key(unique("rate"), "shop")
    shares = [GroupShare(redis_url, key, max_members=12, refresh_s=0.5, ttl_s=5.0) for _ in "ab"]
    for share in shares:
        await share.start()
    try:
        await shares[0].refresh()  # as its next heartbeat would: it now sees the second
        assert [share.divisor for share in shares] == [2, 2]
        limiters = [
            RequestLimiter(RateLimit(group_requests_per_s=GROUP_RATE), group=s) for s in shares
        ]
        tenants = [sandbox.new_tenant() for _ in shares]
        async with reach(sandbox, limiters[0]) as first, reach(sandbox, limiters[1]) as second:
            await asyncio.gather(
                send_all(first, tenants[0], count=30, workers=8),
                send_all(second, tenants[1], count=30, workers=8),
            )
    finally:
        for share in shares:
            await share.close()

    per_process = [[row["at"] for row in logged(sandbox, t)] for t in tenants]
    every = sorted(per_process[0] + per_process[1])
    assert [stored_count(sandbox, t) for t in tenants] == [30, 30]
    # The group's 10/s over any 2 s window is 20 requests; allow each process one request
    # for the window's fencepost and one for scheduling jitter.
    assert busiest(every, 2.0) <= 2 * GROUP_RATE + 4
    # Each at its half: 5/s, so 10 in 2 s, plus the same 2 of margin.
    for times in per_process:
        assert busiest(times, 2.0) <= GROUP_RATE + 2
    # Over the whole run (about 6 s): at most the group rate, plus 10 % and both first requests.
    span = every[-1] - every[0]
    assert len(every) <= GROUP_RATE * span * 1.1 + 2


# --- membership ----------------------------------------------------------------------------------


async def test_members_that_leave_or_die_stop_counting(
    redis_url: str, unique: Callable[[str], str]
) -> None:
    key = group_key(unique("rate"), "shop")
    me = GroupShare(redis_url, key, max_members=12, refresh_s=0.2, ttl_s=1.0)
    other = GroupShare(redis_url, key, max_members=12, refresh_s=0.2, ttl_s=1.0)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await me.start()
        await other.start()
        seconds, micros = await raw.time()
        await raw.zadd(key, {"ghost": seconds * 1000 + micros // 1000})  # one beat, then dead
        await me.refresh()
        assert (me.live, me.divisor) == (3, 3)

        await other.close()  # a clean stop leaves at once
        await me.refresh()
        assert me.divisor == 2

        await asyncio.sleep(1.2)  # the ghost's beat is now older than the TTL
        await me.refresh()
        assert (me.live, me.divisor) == (1, 1)
    finally:
        await me.close()
        await raw.aclose()


async def test_the_divisor_is_capped_by_the_partitions(
    redis_url: str, unique: Callable[[str], str]
) -> None:
    key = group_key(unique("rate"), "shop")
    shares = [GroupShare(redis_url, key, max_members=2) for _ in range(3)]
    try:
        for share in shares:
            await share.refresh()
        assert (shares[-1].live, shares[-1].divisor) == (3, 2)  # a third syncer has no work
    finally:
        for share in shares:
            await share.close()


async def test_without_redis_the_share_stays_limited(state_root: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    share = GroupShare(url, "reach-sync-test:ratelimit:g:members", max_members=6)
    try:
        await share.refresh()  # nothing listens yet: the safe share, never unlimited
        assert share.divisor == 6 and share.live is None

        server = ManagedProcess(
            redis_component.redis_spec(port, state_root / "redis-share", state_root / "logs")
        )
        server.start()
        try:
            wait_until(server, lambda: redis_component.redis_ready(url), 30)
            await share.refresh()
            assert share.divisor == 1
        finally:
            server.stop()
        await share.refresh()  # gone again: the last share is kept
        assert share.divisor == 1
    finally:
        await share.close()


async def test_the_service_limiter_joins_the_group_while_it_runs(
    redis_url: str, unique: Callable[[str], str]
) -> None:
    prefix = unique("rate")
    definition = shop_definition(REACH_SYNC_REDIS_URL=redis_url, REACH_SYNC_REDIS_PREFIX=prefix)
    destination = definition.destination.model_copy(
        update={"rate_limit": RateLimit(requests_per_s=50, group_requests_per_s=100)}
    )
    definition = definition.model_copy(update={"destination": destination})
    key = group_key(prefix, definition.source.kafka.group_id)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        async with open_limiter(definition) as limiter:
            assert await raw.zcard(key) == 1
            assert limiter.group_rate() == 100
            assert limiter.process_rate() == 50
        assert await raw.zcard(key) == 0
    finally:
        await raw.aclose()
