"""Token buckets per credential and per tenant (docs/reach-api.md §7 Q11).

A request needs a token from every bucket that applies; it takes from none unless all have one,
so a tenant-level refusal does not also drain the credential's budget. Refusals carry
``Retry-After`` in whole seconds (HTTP allows no fractions), rounded up so a client that honours
it is not refused again for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reach_sandbox.config import RateLimitConfig, RateLimitsConfig

__all__ = ["Decision", "RateLimiter"]


class _Bucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, settings: RateLimitConfig, now: float) -> None:
        self.rate = settings.rate_per_second
        self.burst = float(settings.burst)
        self.tokens = self.burst
        self.stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        """Seconds until one token is available (0 when one is)."""
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def reset_after(self) -> float:
        return (self.burst - self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    headers: dict[str, str]
    retry_after: int = 0


class RateLimiter:
    """Buckets are created on first use and forgotten when the settings change."""

    def __init__(self, settings: RateLimitsConfig) -> None:
        self.settings = settings
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def configure(self, settings: RateLimitsConfig) -> None:
        self.settings = settings
        self._buckets.clear()

    def check(self, credential: str, tenant_id: str | None, now: float) -> Decision:
        buckets = [
            self._bucket(scope, key, cfg, now)
            for scope, key, cfg in (
                ("token", credential, self.settings.per_token),
                ("tenant", tenant_id, self.settings.per_tenant),
            )
            if cfg is not None and key is not None
        ]
        if not buckets:
            return Decision(True, {})
        for bucket in buckets:
            bucket.refill(now)
        wait = max(bucket.wait() for bucket in buckets)
        allowed = wait == 0.0
        if allowed:
            for bucket in buckets:
                bucket.tokens -= 1.0
        tightest = min(buckets, key=lambda b: b.tokens)
        headers = {
            "X-RateLimit-Limit": str(int(tightest.burst)),
            "X-RateLimit-Remaining": str(max(0, math.floor(tightest.tokens))),
            "X-RateLimit-Reset": str(math.ceil(tightest.reset_after())),
        }
        if allowed:
            return Decision(True, headers)
        retry_after = max(1, math.ceil(wait))
        headers["Retry-After"] = str(retry_after)
        return Decision(False, headers, retry_after)

    def _bucket(self, scope: str, key: str, settings: RateLimitConfig, now: float) -> _Bucket:
        found = self._buckets.get((scope, key))
        if found is None:
            found = self._buckets[(scope, key)] = _Bucket(settings, now)
        return found
