"""Client-side rate limits: the config section, and how 429s pause and slow the limiter.

Pauses run on a fake clock (``sleep`` advances it and records how long each waited); bucket
behaviour uses aiolimiter's real clock with rates so low that "would wait" means seconds, never
a close call. What the real sandbox sees is in tests/integration/test_rate_limits.py.
"""

from __future__ import annotations

import asyncio
import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from consumer.config import RateLimit
from consumer.config_file import load_definition
from consumer.errors import DefinitionError
from consumer.reach.client import RequestInfo
from consumer.reach.limits import MIN_SCALE, RECOVERY_PER_S, RequestLimiter
from tests.shop_definition import EXAMPLE, OFFLINE_ENV


class FakeTime:
    """A monotonic clock whose ``sleep`` returns at once, after moving the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class FixedShare:
    divisor: int


def info(tenant: str) -> RequestInfo:
    return RequestInfo(tenant, "upsert_one", 1)


def answer(
    limiter: RequestLimiter, tenant: str, status: int, retry_after: str | None = None
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    limiter.after_response(info(tenant), httpx.Response(status, headers=headers))


def limiter_with(fake: FakeTime, **settings: Any) -> RequestLimiter:
    return RequestLimiter(
        RateLimit(**settings) if settings else None, clock=fake.clock, sleep=fake.sleep
    )


async def gets_through(limiter: RequestLimiter, tenant: str, within_s: float = 0.3) -> bool:
    """Whether one request may go at once (a bucket that would block blocks for seconds)."""
    try:
        await asyncio.wait_for(limiter.before_request(info(tenant)), within_s)
    except TimeoutError:
        return False
    return True


# --- config --------------------------------------------------------------------------------------


def _problems_with(tmp_path: Path, rate_limit: object) -> list[str]:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["destination"]["rate_limit"] = rate_limit
    path = tmp_path / "definition.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DefinitionError) as caught:
        load_definition(path, OFFLINE_ENV)
    return caught.value.problems


def test_a_rate_limit_section_loads(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["destination"]["rate_limit"] = {
        "requests_per_s": 20,
        "burst": 5,
        "per_tenant_requests_per_s": 2.5,
        "group_requests_per_s": 50,
    }
    path = tmp_path / "definition.yaml"
    path.write_text(yaml.safe_dump(data))
    limits = load_definition(path, OFFLINE_ENV).destination.rate_limit
    assert limits == RateLimit(
        requests_per_s=20, burst=5, per_tenant_requests_per_s=2.5, group_requests_per_s=50
    )
    assert load_definition(EXAMPLE, OFFLINE_ENV).destination.rate_limit is None


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"requests_per_s": 0},
            "destination.rate_limit.requests_per_s: Input should be greater than 0",
        ),
        (
            {"per_tenant_requests_per_s": -3},
            "destination.rate_limit.per_tenant_requests_per_s: Input should be greater than 0",
        ),
        (
            {"requests_per_s": 5, "burst": 0},
            "destination.rate_limit.burst: Input should be greater than or equal to 1",
        ),
        (
            {"requests_per_s": float("inf")},
            "destination.rate_limit.requests_per_s: Input should be a finite number",
        ),
        (
            {},
            "destination.rate_limit: sets no limit: set requests_per_s, "
            "per_tenant_requests_per_s or group_requests_per_s, or remove rate_limit",
        ),
        (
            {"per_tenant_requests_per_s": 2, "burst": 4},
            "destination.rate_limit: burst needs requests_per_s or group_requests_per_s",
        ),
        (
            {"requests_per_s": 2, "per_tenant_burst": 4},
            "destination.rate_limit: per_tenant_burst needs per_tenant_requests_per_s",
        ),
        (
            {"requests_per_s": 2, "burts": 4},
            "destination.rate_limit.burts: Extra inputs are not permitted",
        ),
    ],
)
def test_nonsense_limits_are_named(tmp_path: Path, section: object, expected: str) -> None:
    assert _problems_with(tmp_path, section) == [expected]


# --- adaptation on 429 ---------------------------------------------------------------------------


def test_a_429_halves_the_tenant_rate_once_per_cooldown_and_successes_restore_it() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake, per_tenant_requests_per_s=8)
    assert limiter.tenant_rate("a") == 8

    answer(limiter, "a", 429)
    assert limiter.tenant_rate("a") == 4
    fake.now += 0.5
    answer(limiter, "a", 429)  # an answer to a request already in flight: the same signal
    assert limiter.tenant_rate("a") == 4
    fake.now += 1.0
    answer(limiter, "a", 429)
    assert limiter.tenant_rate("a") == 2

    fake.now += 2.0
    answer(limiter, "a", 200)
    assert limiter.tenant_rate("a") == pytest.approx(2 + 2.0 * RECOVERY_PER_S * 8)
    fake.now += 60.0
    answer(limiter, "a", 200)
    assert limiter.tenant_rate("a") == 8  # back to the configured rate, never above
    assert limiter.tenant_rate("b") == 8


def test_the_rate_never_falls_to_zero() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake, per_tenant_requests_per_s=8)
    for _ in range(20):
        answer(limiter, "a", 429)
        fake.now += 2.0
    assert limiter.tenant_rate("a") == 8 * MIN_SCALE


def test_time_paused_earns_no_recovery() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake, per_tenant_requests_per_s=8)
    answer(limiter, "a", 429, retry_after="30")
    fake.now += 30.0
    answer(limiter, "a", 200)  # the first success after the pause
    assert limiter.tenant_rate("a") == 4


async def test_a_slowed_bucket_costs_more_tokens_per_request() -> None:
    limiter = RequestLimiter(RateLimit(per_tenant_requests_per_s=0.1, per_tenant_burst=4))
    for _ in range(4):
        assert await gets_through(limiter, "fresh")
    assert not await gets_through(limiter, "fresh")  # the next token is 10 s away

    answer(limiter, "slowed", 429)  # half the rate: each request now costs 2 of the 4 tokens
    assert await gets_through(limiter, "slowed")
    assert await gets_through(limiter, "slowed")
    assert not await gets_through(limiter, "slowed")


# --- Retry-After ---------------------------------------------------------------------------------


async def test_retry_after_in_seconds_pauses_that_tenant() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake)  # no limits configured: a 429 still pauses
    answer(limiter, "a", 429, retry_after="3")
    assert limiter.paused_for("a") == 3.0
    await limiter.before_request(info("a"))
    assert sum(fake.slept) == pytest.approx(3.0)
    assert limiter.paused_for("a") == 0.0


async def test_retry_after_as_an_http_date_pauses_until_then() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake)
    when = datetime.now(UTC) + timedelta(seconds=20)
    answer(limiter, "a", 429, retry_after=email.utils.format_datetime(when, usegmt=True))
    assert 18.0 < limiter.paused_for("a") <= 20.0  # an HTTP date has whole seconds
    await limiter.before_request(info("a"))
    assert 18.0 < sum(fake.slept) <= 20.0


def test_an_absurd_retry_after_is_capped_and_garbage_ignored() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake)
    answer(limiter, "a", 429, retry_after="86400")
    answer(limiter, "b", 429, retry_after="soon, maybe")
    assert limiter.paused_for("a") == 300.0
    assert limiter.paused_for("b") == 300.0  # two tenants at once: the credential's pause
    assert limiter.paused_for("c") == 300.0


# --- isolation -----------------------------------------------------------------------------------


async def test_a_throttled_tenant_does_not_slow_another() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake, per_tenant_requests_per_s=4, per_tenant_burst=4)
    answer(limiter, "a", 429, retry_after="30")
    assert limiter.tenant_rate("a") == 2 and limiter.paused_for("a") == 30

    for _ in range(4):
        await limiter.before_request(info("b"))
    assert fake.slept == []  # b never waited
    assert limiter.tenant_rate("b") == 4 and limiter.paused_for("b") == 0


async def test_a_paused_tenant_takes_nothing_from_the_process_bucket() -> None:
    limiter = RequestLimiter(RateLimit(requests_per_s=0.1, burst=2))
    answer(limiter, "a", 429, retry_after="30")
    waiting = [asyncio.ensure_future(limiter.before_request(info("a"))) for _ in range(5)]
    try:
        assert await gets_through(limiter, "b")
        assert await gets_through(limiter, "b")  # the burst of 2 was still whole
        assert not any(task.done() for task in waiting)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


def test_429s_from_two_tenants_at_once_throttle_the_credential() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake, requests_per_s=10)
    answer(limiter, "a", 429, retry_after="2")
    assert limiter.paused_for("c") == 0 and limiter.process_rate() == 10
    fake.now += 0.5
    answer(limiter, "b", 429, retry_after="2")
    assert limiter.paused_for("c") == 2.0
    assert limiter.process_rate() == 5


def test_429s_from_two_tenants_far_apart_stay_theirs() -> None:
    fake = FakeTime()
    limiter = limiter_with(fake, requests_per_s=10)
    answer(limiter, "a", 429)
    fake.now += 5.0
    answer(limiter, "b", 429)
    assert limiter.process_rate() == 10
    assert limiter.tenant_rate("a") == 5 and limiter.tenant_rate("b") == 5  # at the process rate


# --- the group share -----------------------------------------------------------------------------


def test_the_group_total_is_split_by_the_live_members() -> None:
    share = FixedShare(divisor=4)
    limiter = RequestLimiter(RateLimit(group_requests_per_s=40), group=share)
    assert limiter.group_rate() == 10
    share.divisor = 1
    assert limiter.group_rate() == 40


async def test_a_group_share_costs_divisor_tokens() -> None:
    share = FixedShare(divisor=2)
    limiter = RequestLimiter(RateLimit(group_requests_per_s=0.1, burst=2), group=share)
    assert await gets_through(limiter, "a")
    assert not await gets_through(limiter, "b")  # 2 tokens per request: the burst is spent


def test_a_group_limit_needs_a_share() -> None:
    with pytest.raises(ValueError, match="GroupShare"):
        RequestLimiter(RateLimit(group_requests_per_s=10))
