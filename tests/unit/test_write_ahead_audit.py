"""The write-ahead audit record (outcome ``sending``) in delivery: what a request carries is
announced, and the announcement made durable (``on_sending`` returned), before the request is
made; an announcement that fails sends nothing; nothing is remembered because of one.

One log records, in order, what the last-sent store, the Reach API (through the client's
transport seam) and the two audit callbacks were asked to do. The same on the real sandbox and
broker, with the process ending after its request left: tests/integration/test_syncer_audit.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import orjson
import pytest

from consumer.config import Resource
from consumer.errors import Retryable
from consumer.reach.client import ReachClient
from consumer.router.dirty import EntityId
from consumer.sink.dedup import LastSent
from consumer.sink.delivery import DeliveryResult, deliver_resource
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.recompute import Recomputed
from tests.shop_definition import shop_definition

DEFINITION = shop_definition(REACH_SYNC_JWT_SECRET="a-jwt-secret-of-at-least-32-bytes!")
CUSTOMERS = DEFINITION.resources["customers"]  # mode: batch
TRANSACTIONS = DEFINITION.resources["transactions"]  # mode: realtime, batch_over 8
TENANT = "merchant-1"


class _Run:
    """One delivery's stand-ins, all writing to one ``log``."""

    def __init__(
        self, known: dict[str, LastSent] | None = None, reach_status: int | None = None
    ) -> None:
        self.log: list[str] = []
        self.known = known or {}
        self.reach_status = reach_status  # an answer every write gets instead of success
        self.announced: list[tuple[list[Sending], list[Deleting]]] = []
        self.reported: list[tuple[list[Sent], list[Removed]]] = []
        self.announce_fails = False

    # --- the last-sent store ---

    async def get_many(self, resource: str, ids: Sequence[EntityId]) -> dict[str, LastSent]:
        return {str(i): self.known[str(i)] for i in ids if str(i) in self.known}

    async def put_in_doubt(
        self, resource: str, ids: Iterable[EntityId], *, required: bool = True
    ) -> None:
        self.log.append(f"doubt {_ids(ids)}")

    async def record_sent(self, resource: str, sent: Iterable[tuple[EntityId, LastSent]]) -> None:
        entries = list(sent)
        if entries:
            self.log.append(f"remember {_ids(i for i, _ in entries)}")

    async def forget(self, resource: str, ids: Sequence[EntityId]) -> None:
        if ids:
            self.log.append(f"forget {_ids(ids)}")

    # --- tenants_query ---

    async def tenants(self, resource: Resource) -> list[str]:
        return [TENANT]

    # --- the audit ---

    async def on_sending(self, sending: Sequence[Sending], deleting: Sequence[Deleting]) -> None:
        self.announced.append((list(sending), list(deleting)))
        ids = [s.projected.external_id for s in sending] + [d.external_id for d in deleting]
        self.log.append(f"sending {_ids(ids)}")
        if self.announce_fails:
            raise Retryable("the audit topic t.audit did not acknowledge 2 records: timed out")

    async def on_accepted(self, sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
        self.reported.append((list(sent), list(removed)))
        ids = [s.projected.external_id for s in sent] + [r.external_id for r in removed]
        self.log.append(f"accepted {_ids(ids)}")

    # --- Reach ---

    def reach(self, request: httpx.Request) -> httpx.Response:
        self.log.append(f"{request.method} {request.url.path}")
        if request.url.path.startswith("/api/batches/"):
            batch_id = request.url.path.rsplit("/", 1)[1]
            return httpx.Response(200, json={"data": {"batchId": batch_id, "status": "success"}})
        if self.reach_status is not None:
            return httpx.Response(self.reach_status, headers={"retry-after": "0"})
        if request.url.path.endswith("/batch"):
            body = orjson.loads(request.content)
            count = len(body.get("data") or body.get("externalIds") or [])
            batch = "d-1" if request.method == "DELETE" else "b-1"
            return httpx.Response(202, json={"data": {"batchId": batch, "recordCount": count}})
        return httpx.Response(201, json={"data": {"id": "r-1"}})

    async def deliver(
        self, resource_name: str, recomputed: Recomputed, resource: Resource | None = None
    ) -> DeliveryResult:
        resource = resource or DEFINITION.resources[resource_name]
        client = ReachClient(DEFINITION.destination, transport=httpx.MockTransport(self.reach))
        try:
            stand_in: Any = self
            return await deliver_resource(
                resource_name,
                resource,
                recomputed,
                client=client,
                last_sent=stand_in,
                tenants=stand_in,
                on_accepted=self.on_accepted,
                on_sending=self.on_sending,
            )
        finally:
            await client.aclose()


def _ids(ids: Iterable[EntityId]) -> str:
    return ",".join(sorted(map(str, ids)))


def _customers(*ids: int) -> Recomputed:
    rows = {
        str(i): {"id": i, "tenant": TENANT, "email": f"c{i}@example.com", "completed_orders": i}
        for i in ids
    }
    return Recomputed(rows=rows, gone=[])


def _transactions(*ids: int) -> Recomputed:
    rows = {
        str(i): {"id": i, "tenant": TENANT, "customer_id": 8, "status": "completed"} for i in ids
    }
    return Recomputed(rows=rows, gone=[])


async def test_a_batch_is_announced_before_its_request_and_remembered_only_after_its_outcome() -> (
    None
):
    run = _Run()
    before = int(time.time() * 1000)
    result = await run.deliver("customers", _customers(1, 2, 3))
    assert result.sent == 3
    assert run.log == [
        "doubt 1,2,3",
        "sending 1,2,3",  # one announcement (one audit flush) for the request, before it
        "POST /api/resources/shop_customers/batch",
        "GET /api/batches/b-1",
        "accepted 1,2,3",
        "remember 1,2,3",
    ]
    ((sending, deleting),) = run.announced
    assert deleting == []
    assert all(s.in_batch and before <= s.at_ms <= int(time.time() * 1000) for s in sending)
    # The state announced is the state sent and accepted.
    ((sent, _),) = run.reported
    assert [s.projected for s in sending] == [s.projected for s in sent]


async def test_single_writes_of_a_tenant_are_announced_together_once_before_the_first() -> None:
    run = _Run()
    result = await run.deliver("transactions", _transactions(1, 2, 3, 4, 5))
    assert result.sent == 5
    writes = ["POST /api/resources/shop_transactions"] * 5
    assert run.log == [
        "doubt 1,2,3,4,5",
        "sending 1,2,3,4,5",  # the tenant's writes, announced together before any is made
        *writes,
        "accepted 1,2,3,4,5",
        "remember 1,2,3,4,5",
    ]
    ((sending, _),) = run.announced
    assert not any(s.in_batch for s in sending)


async def test_new_and_known_entities_of_a_tenant_are_announced_in_one_go() -> None:
    """``new: realtime``: the new entities as single writes, the known ones as a batch, at
    once; both requests' records are announced together, each with the path it takes."""
    hybrid = CUSTOMERS.model_copy(
        update={"delivery": CUSTOMERS.delivery.model_copy(update={"new": "realtime"})}
    )
    run = _Run(known={str(i): LastSent(TENANT, "older") for i in range(1, 10)})
    result = await run.deliver("customers", _customers(*range(1, 12)), hybrid)
    assert result.sent == 11
    ((sending, _),) = run.announced
    assert {s.projected.external_id: s.in_batch for s in sending} == {
        **{str(i): True for i in range(1, 10)},
        "10": False,
        "11": False,
    }
    first_request = min(i for i, line in enumerate(run.log) if line.startswith(("POST", "GET")))
    assert run.log.index("sending 1,10,11,2,3,4,5,6,7,8,9") == first_request - 1


async def test_a_delete_is_announced_before_its_request_and_forgotten_after_its_outcome() -> None:
    run = _Run(known={"7": LastSent(TENANT, "h")})
    result = await run.deliver("customers", Recomputed(rows={}, gone=[7]))
    assert result.deleted == 1
    assert run.log == [
        "doubt 7",
        "sending 7",
        "DELETE /api/resources/shop_customers/batch",
        "GET /api/batches/d-1",
        "accepted 7",
        "forget 7",
    ]
    ((sending, (deleting,)),) = run.announced
    assert sending == [] and (deleting.tenant, deleting.external_id) == (TENANT, "7")


@pytest.mark.parametrize(
    ("resource", "recomputed", "known"),
    [
        ("customers", _customers(1, 2), {}),
        ("transactions", _transactions(1, 2), {}),
        (
            "customers",
            Recomputed(rows={}, gone=[1, 2]),
            {str(i): LastSent(TENANT, "h") for i in (1, 2)},
        ),
    ],
    ids=["batch", "single-writes", "deletes"],
)
async def test_an_announcement_that_is_not_durable_sends_nothing_and_fails_retryable(
    resource: str, recomputed: Recomputed, known: dict[str, LastSent]
) -> None:
    run = _Run(known=known)
    run.announce_fails = True
    with pytest.raises(Retryable, match="audit topic"):
        await run.deliver(resource, recomputed)
    # Put in doubt, announced, and then nothing: no request, no outcome, nothing remembered.
    assert run.log == ["doubt 1,2", "sending 1,2"]
    assert run.reported == []


@pytest.mark.parametrize("status", [429, 502], ids=["not-applied", "answer-lost"])
async def test_nothing_is_remembered_because_of_an_announcement(status: int) -> None:
    """The request was announced and left, and Reach did not confirm it: the entity is not
    remembered as sent (a lost answer is reported unconfirmed, never remembered)."""
    run = _Run(reach_status=status)
    with pytest.raises(Retryable):
        await run.deliver("transactions", _transactions(1))
    assert run.log[:3] == ["doubt 1", "sending 1", "POST /api/resources/shop_transactions"]
    assert not any(line.startswith("remember") for line in run.log)
    reported = [s for sent, _ in run.reported for s in sent]
    assert all(s.unconfirmed for s in reported) and len(reported) == (status == 502)
