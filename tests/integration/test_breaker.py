"""The circuit breaker in front of the real sandbox: a Reach that answers only 503 opens it,
then requests fail at once without reaching the server, and once Reach is back one probe closes
it. The state machine alone, on a fake clock, is in tests/unit/test_breaker.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxServer,
    running_sandbox,
)

from consumer.config import CircuitBreaker, Destination
from consumer.errors import Retryable
from consumer.reach.breaker import BreakerTransport, Circuit, CircuitState
from consumer.reach.client import ReachClient

# Short on purpose: the real time the test waits is a few of these.
SETTINGS = CircuitBreaker(open_after_s=0.3, probe_interval_s=0.3)
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


async def test_a_failing_reach_opens_the_circuit_and_one_probe_closes_it(
    sandbox: SandboxServer,
) -> None:
    tenant = sandbox.new_tenant()
    auth = {"mode": "jwt", "partner_id": PARTNER_ID, "secret": SecretStr(PARTNER_SECRET)}
    destination = Destination.model_validate({"base_url": sandbox.base_url, "auth": auth})
    circuit = Circuit(SETTINGS)
    transport = BreakerTransport(AiohttpTransport(), circuit)
    record = {"customerId": "c1", "email": "c1@example.com"}
    sandbox.add_fault(kind="error", status=503, tenant=tenant, path_prefix="/api/")
    try:
        async with ReachClient(destination, transport=transport) as client:

            async def send() -> Exception | None:
                try:
                    await client.upsert_one(tenant, "customers", record)
                except Retryable as exc:
                    return exc
                return None

            deadline = time.monotonic() + DEADLINE_S
            while circuit.state is CircuitState.CLOSED:
                assert "answered 503" in str(await send())
                assert time.monotonic() < deadline, "the circuit never opened"

            # Open: failing at once, and the sandbox hears nothing of it.
            seen = len(sandbox.requests(tenant))
            failed = await send()
            assert failed is not None and "circuit open" in str(failed)
            assert len(sandbox.requests(tenant)) == seen

            sandbox.clear_faults()
            while (outcome := await send()) is not None:
                assert "circuit open" in str(outcome)  # until the probe is due
                assert time.monotonic() < deadline, "no probe closed the circuit"
        assert circuit.state is CircuitState.CLOSED
        assert len(sandbox.requests(tenant)) == seen + 1  # the probe, and nothing else
        assert sandbox.history(tenant, "customers", "c1")[-1]["data"]["email"] == record["email"]
    finally:
        sandbox.clear_faults()
