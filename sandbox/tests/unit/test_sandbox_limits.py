"""Token buckets and fault firing: the arithmetic behind 429s and injected failures."""

from __future__ import annotations

from reach_sandbox.auth import Principal, key_credential
from reach_sandbox.config import RateLimitConfig, RateLimitsConfig
from reach_sandbox.fault_specs import ErrorFault, RecordFailureFault, RevokeFault
from reach_sandbox.faults import FaultBoard
from reach_sandbox.ratelimit import RateLimiter
from reach_sandbox.registry import Tenant

TENANT = Tenant("tenant-1", "p", "merchant-1", {}, 0.0, 0.0)


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    limiter = RateLimiter(RateLimitsConfig(per_token=RateLimitConfig(rate_per_second=2, burst=2)))
    assert [limiter.check("tok", None, 100.0).allowed for _ in range(3)] == [True, True, False]
    refused = limiter.check("tok", None, 100.0)
    assert refused.retry_after == 1  # half a second, rounded up to whole seconds
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert limiter.check("tok", None, 100.5).allowed
    assert limiter.check("other-token", None, 100.5).allowed


def test_a_tenant_refusal_does_not_spend_the_token_budget() -> None:
    limiter = RateLimiter(
        RateLimitsConfig(
            per_token=RateLimitConfig(rate_per_second=1, burst=5),
            per_tenant=RateLimitConfig(rate_per_second=1, burst=1),
        )
    )
    assert limiter.check("tok", "t1", 0.0).allowed
    assert not limiter.check("tok", "t1", 0.0).allowed
    allowed = limiter.check("tok", "t2", 0.0)
    assert allowed.allowed
    assert allowed.headers["X-RateLimit-Remaining"] == "0"  # the tightest bucket: t2's
    assert limiter.check("tok", "t3", 0.0).headers["X-RateLimit-Limit"] == "1"


def test_no_limits_means_no_headers() -> None:
    decision = RateLimiter(RateLimitsConfig()).check("tok", "t1", 0.0)
    assert decision.allowed and decision.headers == {}


def test_a_counted_fault_removes_itself() -> None:
    board = FaultBoard([ErrorFault(kind="error", status=503, count=2)], seed=1)
    fired = [board.for_request(TENANT, "/api/x", "GET").error for _ in range(3)]
    assert [f.status if f else None for f in fired] == [503, 503, None]
    assert board.snapshot() == []


def test_fault_scope_matches_tenant_path_and_method() -> None:
    board = FaultBoard(
        [ErrorFault(kind="error", tenant="merchant-1", path_prefix="/api/batches", method="get")],
        seed=1,
    )
    other = Tenant("tenant-2", "p", "merchant-2", {}, 0.0, 0.0)
    assert board.for_request(TENANT, "/api/batches/1", "GET").error is not None
    assert board.for_request(TENANT, "/api/batches/1", "POST").error is None
    assert board.for_request(TENANT, "/api/resources/x", "GET").error is None
    assert board.for_request(other, "/api/batches/1", "GET").error is None
    assert board.for_request(None, "/api/batches/1", "GET").error is None


def test_record_failures_hit_listed_ids_always() -> None:
    board = FaultBoard(
        [RecordFailureFault(kind="record_failure", external_ids=("a",), rate=0.0)], seed=1
    )
    inject = board.record_injector(TENANT, "/api/resources/customers/batch")
    assert inject is not None
    assert inject("a") == "injected record failure"
    assert inject("b") is None


def test_revocations_target_a_partner_or_one_key() -> None:
    board = FaultBoard([RevokeFault(kind="revoke", static_key="k1")], seed=None)
    assert board.is_revoked(Principal("p", "static_key", key_credential("k1")))
    assert not board.is_revoked(Principal("p", "static_key", key_credential("k2")))
    assert not board.is_revoked(Principal("p", "partner_jwt", "jwt:p:x"))
    board.add(RevokeFault(kind="revoke", partner_id="p"))
    assert board.is_revoked(Principal("p", "partner_jwt", "jwt:p:x"))
