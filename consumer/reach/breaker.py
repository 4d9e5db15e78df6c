"""A circuit breaker for Reach: when everything sent to Reach fails for a while, stop sending.

Retries with backoff already spread the load of a failing Reach, but every partition keeps
retrying on its own, and each retry is a real request that waits for its timeout. Once every
request has failed with a transient error (a connection refused, a timeout, a 5xx) for
``open_after_s`` without a single success in between, the circuit opens: requests fail at once
with ``Retryable``, without touching the network, so windows back off as for any retryable
error; every ``probe_interval_s`` one request goes through as a probe, and its success closes
the circuit. Any success closes it, whatever the state: Reach answers again.

What counts: a transport error (refused, reset, timed out) or an answer of 5xx, 408 or 425 is a
failure; any other answer is a success, including 4xx, which are about the request (a 401 is a
tenant's or a credential's business, not Reach's health), and 429, which says Reach is up and
asks us to slow down (the rate limiter's business).

The breaker sits in the HTTP transport (``BreakerTransport``), below the client: that is the
one place that sees every request and its outcome, cancellations included, so a probe can never
be lost; and it needs nothing from the client but its ``transport`` seam.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

import httpx

from consumer.config import CircuitBreaker
from consumer.errors import Retryable

__all__ = ["BreakerTransport", "Circuit", "CircuitState"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Answers that say Reach itself is failing (classify.py retries them too; 429 is left out on
# purpose, see the module docstring).
_FAILED_STATUSES = frozenset({408, 425})


class CircuitState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # one probe is in flight


def _failed(status: int) -> bool:
    return status >= 500 or status in _FAILED_STATUSES


class Circuit:
    """The state machine, with its clock as a seam. One per process: every partition and
    every tenant share it, since they share Reach.

    ``admit`` before a request (raises when the request must not go), then exactly one of
    ``succeeded``, ``failed`` or ``abandoned`` with the value ``admit`` returned.
    """

    def __init__(self, settings: CircuitBreaker, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failing_since: float | None = None  # the first failure since the last success
        self._opened_at = 0.0  # when it opened, or when the last probe failed

    @property
    def state(self) -> CircuitState:
        return self._state

    def admit(self) -> bool:
        """Whether the request may go; True means it is the probe. Raises ``Retryable`` when
        the circuit is open and no probe is due, or a probe is already in flight."""
        if self._state is CircuitState.CLOSED:
            return False
        wait = self._opened_at + self._settings.probe_interval_s - self._clock()
        if self._state is CircuitState.OPEN and wait <= 0:
            self._state = CircuitState.HALF_OPEN
            return True
        raise Retryable(
            "Reach circuit open: every request failed for "
            f"{self._settings.open_after_s:.0f} s; "
            + ("a probe is in flight" if wait <= 0 else f"next probe in {wait:.1f} s")
        )

    def succeeded(self, probe: bool) -> None:
        if self._state is not CircuitState.CLOSED:
            log.warning("Reach answers again: circuit closed (%s)", "probe" if probe else "reply")
        self._state = CircuitState.CLOSED
        self._failing_since = None

    def failed(self, probe: bool, reason: str) -> None:
        now = self._clock()
        if probe and self._state is CircuitState.HALF_OPEN:
            self._state = CircuitState.OPEN
            self._opened_at = now
            log.info("Reach circuit probe failed (%s); next in %.1f s", reason, self._interval)
            return
        if self._state is not CircuitState.CLOSED:
            return  # a request admitted before the circuit opened: nothing new
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self._settings.open_after_s:
            self._state = CircuitState.OPEN
            self._opened_at = now
            log.error(
                "Reach circuit open: every request failed for %.0f s (last: %s); requests fail"
                " at once, one probe every %.1f s",
                now - self._failing_since,
                reason,
                self._interval,
            )

    def abandoned(self, probe: bool) -> None:
        """The request ended without an outcome (cancelled): a probe may go again at once."""
        if probe and self._state is CircuitState.HALF_OPEN:
            self._state = CircuitState.OPEN
            self._opened_at = self._clock() - self._interval

    @property
    def _interval(self) -> float:
        return self._settings.probe_interval_s


class BreakerTransport(httpx.AsyncBaseTransport):
    """An httpx transport that asks ``circuit`` before each request and tells it the outcome."""

    def __init__(self, inner: httpx.AsyncBaseTransport, circuit: Circuit) -> None:
        self._inner = inner
        self._circuit = circuit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        probe = self._circuit.admit()
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as exc:  # refused, reset, timed out: httpx's or the transport's own
            self._circuit.failed(probe, type(exc).__name__)
            raise
        except BaseException:
            self._circuit.abandoned(probe)
            raise
        if _failed(response.status_code):
            self._circuit.failed(probe, f"HTTP {response.status_code}")
        else:
            self._circuit.succeeded(probe)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
