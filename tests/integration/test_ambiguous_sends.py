"""Sends whose outcome reach-sync does not learn, on the real sandbox and Redis.

Each test changes one customer from S0 to S1 while Reach's answer is lost (a 502 after Reach
applied it, or a batch whose status cannot be read), then takes the customer back to S0 and
delivers again, as the window's retry would after the database reverted. Reach must end at S0:
a last-sent entry still claiming S0 would make the retry skip it, and Reach would keep S1 for
good. Every state Reach applied must be audited, and a batch must be followed to its end before
another batch of the same entity is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from pydantic import SecretStr
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    SandboxServer,
    running_sandbox,
)

from consumer.config import Destination, Resource
from consumer.errors import Retryable
from consumer.reach.client import ReachClient
from consumer.sink.dedup import LastSent, LastSentStore
from consumer.sink.delivery import DeliveryResult, deliver_resource
from consumer.sink.follow import Outstanding
from consumer.sink.outcomes import Removed, Sent
from consumer.sink.recompute import Recomputed

S0 = "before@example.com"
S1 = "after@example.com"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


class _NoTenants:
    async def tenants(self, resource: Resource) -> list[str]:
        return []


def _resource(mode: str) -> Resource:
    return Resource.model_validate(
        {
            "reach_schema": "customers",
            "key": "id",
            "tenant": "tenant",
            "triggers": [{"table": "public.customers", "id": "id"}],
            "query": "SELECT * FROM customers WHERE id = ANY(%(ids)s)",
            "mapping": {
                "customerId": {"column": "id", "format": "string"},
                "email": {"column": "email", "pii": "send"},
            },
            "delivery": {"mode": "realtime", "window_ms": 100}
            if mode == "single"
            else {"mode": "batch", "window_ms": 100},
        }
    )


class _Delivery:
    """One customer of one tenant, delivered as a window (and its retries) would."""

    def __init__(
        self,
        sandbox: SandboxServer,
        last_sent: LastSentStore,
        client: ReachClient,
        mode: str,
        outstanding: Outstanding,
    ) -> None:
        self.sandbox = sandbox
        self.tenant = sandbox.new_tenant()
        self.last_sent = last_sent
        self.client = client
        self.resource = _resource(mode)
        self.outstanding = outstanding
        self.reported: list[Sent] = []

    async def _on_accepted(self, sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
        self.reported.extend(sent)

    async def deliver(self, email: str) -> DeliveryResult:
        row: dict[str, Any] = {"id": 7, "tenant": self.tenant, "email": email}
        return await deliver_resource(
            "customers",
            self.resource,
            Recomputed(rows={"7": row}, gone=[]),
            client=self.client,
            last_sent=self.last_sent,
            tenants=_NoTenants(),
            on_accepted=self._on_accepted,
            outstanding=self.outstanding,
        )

    async def attempt(self, email: str) -> DeliveryResult | Retryable:
        """A window attempt: a Retryable fails it (the syncer retries later), it is not a bug."""
        try:
            return await self.deliver(email)
        except Retryable as exc:
            return exc

    def in_reach(self) -> str | None:
        versions = self.sandbox.history(self.tenant, "customers", "7")
        return versions[-1]["data"]["email"] if versions else None

    def batch_posts(self) -> int:
        requests = self.sandbox.requests(self.tenant, path_prefix="/api/resources")
        return sum(r["method"] == "POST" and r["path"].endswith("/batch") for r in requests)

    def audited(self, email_hash: str) -> list[Sent]:
        return [s for s in self.reported if s.projected.hash == email_hash]


@pytest.fixture
async def delivery_for(sandbox: SandboxServer, redis_url: str, unique: Callable[[str], str]) -> Any:
    auth = {"mode": "jwt", "partner_id": PARTNER_ID, "secret": SecretStr(PARTNER_SECRET)}
    destination = Destination.model_validate(
        {"base_url": sandbox.base_url, "auth": auth, "timeout_s": 5}
    )
    last_sent = LastSentStore(redis_url, unique("ambiguous"))
    async with ReachClient(destination) as client:

        def make(mode: str, outstanding: Outstanding | None = None) -> _Delivery:
            kept = Outstanding() if outstanding is None else outstanding
            return _Delivery(sandbox, last_sent, client, mode, kept)

        try:
            yield make
        finally:
            sandbox.clear_faults()
            await last_sent.close()


@pytest.mark.parametrize("mode", ["single", "batch"])
async def test_a_revert_after_a_502_that_reach_applied_is_sent_again(
    sandbox: SandboxServer, delivery_for: Callable[[str], _Delivery], mode: str
) -> None:
    delivery = delivery_for(mode)
    assert (await delivery.deliver(S0)).sent == 1

    sandbox.add_fault(
        kind="error",
        status=502,
        after_apply=True,
        count=1,
        tenant=delivery.tenant,
        method="POST",
        path_prefix="/api/resources/customers",
    )
    assert isinstance(await delivery.attempt(S1), Retryable)
    if mode == "batch":
        sandbox.wait_idle()
    assert delivery.in_reach() == S1  # applied, though the answer said otherwise

    # The database went back to S0 before the retry: the retry must send it.
    result = await delivery.deliver(S0)
    assert (result.sent, result.skipped) == (1, 0)
    assert delivery.in_reach() == S0
    assert await delivery.last_sent.get_many("customers", ["7"]) == {
        "7": LastSent(delivery.tenant, result_hash(delivery, S0))
    }
    # The record that left with the lost answer is audited, as unconfirmed.
    (unconfirmed,) = [s for s in delivery.reported if s.unconfirmed]
    assert unconfirmed.projected.record["email"] == S1
    assert unconfirmed.in_batch is (mode == "batch")


def result_hash(delivery: _Delivery, email: str) -> str:
    (sent,) = [s for s in delivery.reported if s.projected.record["email"] == email][-1:]
    return sent.projected.hash


async def test_a_batch_whose_status_cannot_be_read_is_followed_to_its_end(
    sandbox: SandboxServer, delivery_for: Callable[[str], _Delivery]
) -> None:
    delivery = delivery_for("batch")
    assert (await delivery.deliver(S0)).sent == 1

    sandbox.add_fault(
        kind="error",
        status=503,
        count=3,
        tenant=delivery.tenant,
        method="GET",
        path_prefix="/api/batches",
    )
    first = await delivery.attempt(S1)
    assert delivery.in_reach() == S1
    # The revert races the retry of the attempt above (if it failed).
    await delivery.attempt(S0)

    assert delivery.in_reach() == S0
    assert isinstance(first, DeliveryResult) and first.sent == 1
    accepted = [s for s in delivery.reported if s.projected.record["email"] == S1]
    assert [(s.unconfirmed, s.batch_id is not None) for s in accepted] == [(False, True)]


async def test_a_batch_unreadable_past_the_bound_is_followed_before_its_entity_is_sent_again(
    sandbox: SandboxServer, delivery_for: Callable[[str, Outstanding | None], _Delivery]
) -> None:
    outstanding = Outstanding(follow_bound_s=1.0)
    delivery = delivery_for("batch", outstanding)
    assert (await delivery.deliver(S0)).sent == 1

    unreadable = sandbox.add_fault(
        kind="error", status=503, tenant=delivery.tenant, method="GET", path_prefix="/api/batches"
    )
    failed = await delivery.attempt(S1)
    assert isinstance(failed, Retryable), "the status was unreadable for longer than the bound"
    assert len(outstanding) == 1
    posts = delivery.batch_posts()

    # While the first batch's end is unknown, the retry (the entity reverted) sends nothing.
    assert isinstance(await delivery.attempt(S0), Retryable)
    assert delivery.batch_posts() == posts

    sandbox.remove_fault(unreadable)
    result = await delivery.deliver(S0)
    assert (result.sent, len(outstanding)) == (1, 0)
    assert delivery.batch_posts() == posts + 1
    assert delivery.in_reach() == S0
    # The kept batch was audited once it was seen finished, with its batch id.
    applied = [s for s in delivery.reported if s.projected.record["email"] == S1]
    assert [(s.unconfirmed, s.batch_id is not None) for s in applied] == [(False, True)]
