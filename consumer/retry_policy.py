"""How long to wait before trying failed work again: exponential backoff with full jitter and a
cap (tenacity's ``wait_random_exponential``, AWS's "Full Jitter"), never sooner than a server's
``Retry-After``.

Only the policy comes from tenacity, not its retry loop: a failed window waits on its
partition's schedule in the syncer's loop instead of sleeping in a task, so the consumer keeps
polling (it stays in the group), what arrives meanwhile joins the retry, and a revoke or a
shutdown drops the waiting window at once instead of waiting out a sleep. The router, which
has one batch in flight, waits on its stop flag for the same delays.
"""

from __future__ import annotations

import tenacity

__all__ = ["retry_delay"]

# A RetryCallState needs an owner; the wait strategy reads only the attempt number from it.
_OWNER = tenacity.Retrying()


def retry_delay(
    attempt: int, *, base_s: float, cap_s: float, retry_after_s: float | None = None
) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` failures (1 or more):
    uniform in [0, min(cap, base * 2^(attempt-1))], or ``retry_after_s`` if that is longer."""
    state = tenacity.RetryCallState(_OWNER, None, (), {})
    state.attempt_number = max(attempt, 1)
    delay = tenacity.wait_random_exponential(multiplier=base_s, max=cap_s)(state)
    return delay if retry_after_s is None else max(delay, retry_after_s)
