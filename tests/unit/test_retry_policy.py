"""Retry delays: full jitter under an exponentially growing, capped ceiling; Retry-After wins."""

from __future__ import annotations

from consumer.retry_policy import retry_delay


def test_delays_stay_under_the_exponential_ceiling_and_the_cap() -> None:
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0), (60, 30.0)]:
        delays = [retry_delay(attempt, base_s=0.5, cap_s=30.0) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays), (attempt, max(delays))
        # Full jitter: spread over the whole interval, not clustered at its top.
        assert min(delays) < ceiling / 4 and max(delays) > ceiling * 3 / 4, attempt


def test_retry_after_is_a_floor() -> None:
    assert all(
        retry_delay(1, base_s=0.5, cap_s=30.0, retry_after_s=45.0) == 45.0 for _ in range(50)
    )
    delays = [retry_delay(10, base_s=0.5, cap_s=30.0, retry_after_s=1.0) for _ in range(300)]
    assert all(1.0 <= d <= 30.0 for d in delays) and max(delays) > 20
