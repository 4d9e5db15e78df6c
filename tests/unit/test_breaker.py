"""The circuit breaker's state machine on a fake clock, and its transport through httpx's seam.

What a real Reach outage does with it (the sandbox's faults) is in
tests/integration/test_breaker.py.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from consumer.config import CircuitBreaker
from consumer.errors import Retryable
from consumer.reach.breaker import BreakerTransport, Circuit, CircuitState

SETTINGS = CircuitBreaker(open_after_s=30.0, probe_interval_s=10.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _circuit() -> tuple[Circuit, Clock]:
    clock = Clock()
    return Circuit(SETTINGS, clock), clock


def _open(circuit: Circuit, clock: Clock) -> None:
    circuit.failed(circuit.admit(), "ConnectError")
    clock.now += SETTINGS.open_after_s
    circuit.failed(circuit.admit(), "ConnectError")
    assert circuit.state is CircuitState.OPEN


def test_it_opens_only_after_failing_without_a_success_for_the_whole_period() -> None:
    circuit, clock = _circuit()
    circuit.failed(circuit.admit(), "HTTP 503")
    clock.now += SETTINGS.open_after_s - 1
    circuit.failed(circuit.admit(), "HTTP 503")
    assert circuit.state is CircuitState.CLOSED
    circuit.succeeded(circuit.admit())  # one success starts the period again
    clock.now += 5
    circuit.failed(circuit.admit(), "HTTP 503")
    clock.now += SETTINGS.open_after_s - 1
    circuit.failed(circuit.admit(), "HTTP 503")
    assert circuit.state is CircuitState.CLOSED
    clock.now += 1
    circuit.failed(circuit.admit(), "HTTP 503")
    assert circuit.state is CircuitState.OPEN


def test_open_fails_fast_until_one_probe_is_due_and_its_success_closes() -> None:
    circuit, clock = _circuit()
    _open(circuit, clock)
    clock.now += SETTINGS.probe_interval_s - 0.5
    with pytest.raises(Retryable, match=r"next probe in 0\.5 s"):
        circuit.admit()
    clock.now += 0.5
    assert circuit.admit() is True  # the probe
    assert circuit.state is CircuitState.HALF_OPEN
    with pytest.raises(Retryable, match="a probe is in flight"):
        circuit.admit()
    circuit.succeeded(True)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.admit() is False


def test_a_failed_probe_waits_a_whole_interval_again() -> None:
    circuit, clock = _circuit()
    _open(circuit, clock)
    clock.now += SETTINGS.probe_interval_s
    circuit.failed(circuit.admit(), "ReadTimeout")
    assert circuit.state is CircuitState.OPEN
    clock.now += SETTINGS.probe_interval_s - 0.1
    with pytest.raises(Retryable):
        circuit.admit()
    clock.now += 0.1
    assert circuit.admit() is True


def test_an_abandoned_probe_lets_the_next_request_probe_at_once() -> None:
    circuit, clock = _circuit()
    _open(circuit, clock)
    clock.now += SETTINGS.probe_interval_s
    circuit.abandoned(circuit.admit())
    assert circuit.state is CircuitState.OPEN
    assert circuit.admit() is True


def test_late_answers_of_requests_sent_before_it_opened() -> None:
    circuit, clock = _circuit()
    _open(circuit, clock)
    circuit.failed(False, "ConnectError")  # nothing new: still open, probe time unchanged
    clock.now += SETTINGS.probe_interval_s
    assert circuit.admit() is True
    circuit.abandoned(True)
    circuit.succeeded(False)  # Reach answered after all: closed, whatever the state
    assert circuit.state is CircuitState.CLOSED


# --- the transport --------------------------------------------------------------------------------


def _transport(answer: int | Exception) -> tuple[BreakerTransport, Circuit, Clock, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    circuit, clock = _circuit()
    return BreakerTransport(httpx.MockTransport(handler), circuit), circuit, clock, seen


async def _get(transport: BreakerTransport) -> int:
    async with httpx.AsyncClient(transport=transport, base_url="http://reach.test") as http:
        return (await http.get("/api/resources/customers")).status_code


@pytest.mark.parametrize("answer", [503, 408, httpx.ConnectError("refused")])
async def test_transport_failures_open_it_and_then_nothing_reaches_the_network(
    answer: int | Exception,
) -> None:
    transport, circuit, clock, seen = _transport(answer)
    for wait in (SETTINGS.open_after_s, 0.0):
        with contextlib.suppress(httpx.ConnectError):
            await _get(transport)
        clock.now += wait
    assert circuit.state is CircuitState.OPEN
    with pytest.raises(Retryable, match="circuit open"):
        await _get(transport)
    assert len(seen) == 2


@pytest.mark.parametrize("status", [200, 202, 400, 401, 403, 404, 429])
async def test_any_other_answer_is_reach_working(status: int) -> None:
    transport, circuit, clock, _ = _transport(status)
    circuit.failed(circuit.admit(), "HTTP 503")
    clock.now += SETTINGS.open_after_s
    assert await _get(transport) == status
    clock.now += 1
    circuit.failed(circuit.admit(), "HTTP 503")
    assert circuit.state is CircuitState.CLOSED  # the answer started the period again


async def test_a_cancelled_probe_is_not_lost() -> None:
    started = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    circuit, clock = _circuit()
    _open(circuit, clock)
    clock.now += SETTINGS.probe_interval_s
    transport = BreakerTransport(httpx.MockTransport(hang), circuit)
    probe = asyncio.ensure_future(_get(transport))
    await started.wait()
    assert circuit.state is CircuitState.HALF_OPEN
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert circuit.admit() is True
