"""A circuit breaker for Reach: when everything sent to Reach fails for a while, stop sending.

Once every request has failed for ``open_after_s`` without a success, requests fail at once with
``Retryable``, without touching the network; every ``probe_interval_s`` one goes through as a
probe, and any success closes the circuit. A transport error or a 5xx, 408 or 425 is a failure;
any other answer (a 4xx is about the request, a 429 asks us to slow down) says Reach is up.

It sits in the HTTP transport (``BreakerTransport``), below the client: the one place that sees
every request and its outcome, cancellations included, so a probe can never be lost. The long
story: docs/design.md, "The Reach client".
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
