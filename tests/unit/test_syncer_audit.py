"""How the window sink audits what delivery reports: each entity with its window's causes, and
one flush of the audit writer at a time, shared by the windows whose records it covers. What a
request is about to carry is audited ahead (``sending``) the same way, and a window whose
announcement the broker did not acknowledge sends nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from consumer.errors import Retryable
from consumer.reach.client import ReachClient
from consumer.router.dirty import Cause, DirtyKey, EntityId
from consumer.sink.dedup import LastSent
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.projection import project
from consumer.sink.recompute import Recomputed
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window
from tests.shop_definition import shop_definition


class _Writer:
    """AuditWriter's interface: ``record`` and ``announce`` keep what they got; ``flush`` blocks
    until the test releases it, then succeeds or raises as told."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, list[Sent], list[Removed]]] = []
        self.announced: list[tuple[str, list[Sending], list[Deleting]]] = []
        self.flushes = 0
        self.flushed_records: list[int] = []  # how many were recorded when each flush began
        self.release = threading.Event()
        self.fail = False

    def record(
        self, name: str, accepted: Iterable[Sent] = (), deleted: Iterable[Removed] = ()
    ) -> int:
        self.recorded.append((name, list(accepted), list(deleted)))
        return len(self.recorded[-1][1]) + len(self.recorded[-1][2])

    def announce(
        self, name: str, sending: Iterable[Sending] = (), deleting: Iterable[Deleting] = ()
    ) -> int:
        self.announced.append((name, list(sending), list(deleting)))
        return len(self.announced[-1][1]) + len(self.announced[-1][2])

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1
        self.flushed_records.append(len(self.recorded))
        assert self.release.wait(10)
        if self.fail:
            raise Retryable("the audit topic t.audit did not acknowledge 1 record: timed out")


@pytest.fixture
def syncers() -> Iterator[list[WindowSink]]:
    """Window sinks a test made; their audit flush threads are stopped when it ends."""
    made: list[WindowSink] = []
    yield made
    for sink in made:
        sink.close()


def _syncer(writer: _Writer, syncers: list[WindowSink]) -> WindowSink:
    nothing: Any = None
    audit: Any = writer
    sink = WindowSink(
        shop_definition(),
        client=nothing,
        db=nothing,
        last_sent=nothing,
        producer=nothing,
        audit=audit,
        gate=nothing,
        stats=SyncerStats(),
    )
    syncers.append(sink)
    return sink


def _window() -> Window:
    window = Window(opened_at=time.monotonic(), due_after_s=0.1)
    for offset, (resource, entity_id) in enumerate(
        [("transactions", 5), ("customers", 8), ("transactions", 5), ("transactions", 6)]
    ):
        cause = Cause(kind="cdc", table="public.transactions", op="u", offset=offset)
        window.add(DirtyKey(resource, entity_id, cause), offset, 0.1)
    return window


def _sent(entity_id: int, batch_id: str | None = None) -> Sent:
    definition = shop_definition()
    row = {"id": entity_id, "tenant": "merchant-1", "customer_id": 8, "status": "completed"}
    return Sent(project(definition.resources["transactions"], row), 1_000 + entity_id, batch_id)


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_each_entity_is_audited_with_its_windows_causes(syncers: list[WindowSink]) -> None:
    writer = _Writer()
    writer.release.set()
    syncer = _syncer(writer, syncers)
    window = _window()
    removed = Removed("merchant-2", "6", 2_000, "d-1")
    await syncer.audit(window, "transactions", [_sent(5, "b-1")], [removed])
    ((name, (accepted,), (deleted,)),) = writer.recorded
    assert name == "transactions"
    assert [c.offset for c in accepted.causes] == [0, 2]
    assert (accepted.at_ms, accepted.batch_id, accepted.parked) == (1_005, "b-1", False)
    assert [c.offset for c in deleted.causes] == [3]
    assert (deleted.tenant, deleted.external_id, deleted.batch_id) == ("merchant-2", "6", "d-1")
    assert (writer.flushes, syncer.stats.audited) == (1, 2)
    assert ("transactions", "7") not in window.causes  # looking causes up adds no entity


async def test_windows_auditing_at_once_share_a_flush_that_began_after_their_records(
    syncers: list[WindowSink],
) -> None:
    writer = _Writer()
    syncer = _syncer(writer, syncers)
    window = _window()
    first = asyncio.ensure_future(syncer.audit(window, "transactions", [_sent(5)], []))
    await _until(lambda: writer.flushes == 1)
    # Written while the first flush runs: that flush may not cover them; the next one does.
    later = [
        asyncio.ensure_future(syncer.audit(window, "transactions", [_sent(n)], []))
        for n in (6, 7, 8)
    ]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in [first, *later])
    writer.release.set()
    await asyncio.gather(first, *later)
    assert writer.flushed_records == [1, 4]
    assert syncer.stats.audited == 4


async def test_a_failed_flush_fails_every_window_it_covers_and_the_next_one_flushes_again(
    syncers: list[WindowSink],
) -> None:
    writer = _Writer()
    writer.fail = True
    syncer = _syncer(writer, syncers)
    window = _window()
    first = asyncio.ensure_future(syncer.audit(window, "transactions", [_sent(5)], []))
    await _until(lambda: writer.flushes == 1)
    later = [
        asyncio.ensure_future(syncer.audit(window, "transactions", [_sent(n)], [])) for n in (6, 7)
    ]
    await asyncio.sleep(0.05)
    writer.release.set()
    outcomes = await asyncio.gather(first, *later, return_exceptions=True)
    assert all(isinstance(o, Retryable) for o in outcomes), outcomes
    # The first window's flush, then one for both later windows, failing both.
    assert (writer.flushed_records, syncer.stats.audited) == ([1, 3], 0)

    writer.fail = False
    await syncer.audit(window, "transactions", [_sent(8)], [])
    assert (writer.flushed_records, syncer.stats.audited) == ([1, 3, 4], 1)


async def test_an_announcement_is_audited_with_the_windows_causes_and_flushed(
    syncers: list[WindowSink],
) -> None:
    writer = _Writer()
    writer.release.set()
    syncer = _syncer(writer, syncers)
    window = _window()
    leaving = Sending(_sent(5).projected, 1_005, in_batch=True)
    await syncer.announce(window, "transactions", [leaving], [Deleting("merchant-2", "6", 1_006)])
    ((name, (sending,), (deleting,)),) = writer.announced
    assert name == "transactions" and writer.recorded == []
    assert [c.offset for c in sending.causes] == [0, 2]
    assert (sending.projected, sending.at_ms, sending.in_batch) == (leaving.projected, 1_005, True)
    assert [c.offset for c in deleting.causes] == [3]
    assert (deleting.tenant, deleting.external_id, deleting.at_ms) == ("merchant-2", "6", 1_006)
    # Flushed before it returns; counted apart from the outcomes.
    assert (writer.flushes, syncer.stats.announced, syncer.stats.audited) == (1, 2, 0)
    assert ("transactions", "7") not in window.causes
    # announce copies Sending's fields one by one (no per-record replace): a field added to
    # Sending must be copied there too.
    assert [f.name for f in dataclasses.fields(Sending)] == [
        "projected",
        "at_ms",
        "in_batch",
        "causes",
    ]


class _Database:
    async def recompute(self, resource: Any, ids: Sequence[EntityId]) -> Recomputed:
        rows = {
            str(i): {"id": i, "tenant": "merchant-1", "customer_id": 8, "status": "completed"}
            for i in ids
        }
        return Recomputed(rows=rows, gone=[])

    async def tenants(self, resource: Any) -> list[str]:
        return []


class _LastSent:
    def __init__(self) -> None:
        self.remembered: list[str] = []

    async def get_many(self, resource: str, ids: Sequence[EntityId]) -> dict[str, LastSent]:
        return {}

    async def put_in_doubt(
        self, resource: str, ids: Iterable[EntityId], *, required: bool = True
    ) -> None:
        return None

    async def record_sent(self, resource: str, sent: Iterable[tuple[EntityId, LastSent]]) -> None:
        self.remembered += [str(i) for i, _ in sent]

    async def forget(self, resource: str, ids: Sequence[EntityId]) -> None:
        return None


class _DeadLetters:
    def flush(self, timeout_s: float) -> int:
        return 0


async def test_a_window_whose_announcement_is_not_acknowledged_sends_nothing_and_fails(
    syncers: list[WindowSink],
) -> None:
    definition = shop_definition(REACH_SYNC_JWT_SECRET="a-jwt-secret-of-at-least-32-bytes!")
    requests: list[str] = []

    def reach(request: httpx.Request) -> httpx.Response:
        requests.append(f"{request.method} {request.url.path}")
        return httpx.Response(201, json={"data": {"id": "r-1"}})

    writer = _Writer()
    writer.fail = True
    writer.release.set()
    last_sent = _LastSent()
    stand_ins: Any = (_Database(), last_sent, writer, _DeadLetters())
    async with ReachClient(definition.destination, transport=httpx.MockTransport(reach)) as client:
        sink = WindowSink(
            definition,
            client=client,
            db=stand_ins[0],
            last_sent=stand_ins[1],
            producer=stand_ins[3],
            audit=stand_ins[2],
            gate=TenantBlocks(definition.destination.tenant_probe),
            stats=SyncerStats(),
        )
        syncers.append(sink)
        window = Window(opened_at=time.monotonic(), due_after_s=0.1)
        for offset, entity_id in enumerate([5, 6, 5]):
            window.add(DirtyKey("transactions", entity_id, Cause(kind="cdc")), offset, 0.1)
        with pytest.raises(Retryable, match="audit topic"):
            await sink.process(window)
        # Announced (the transactions' single writes, together), not acknowledged: not sent.
        ((name, sending, deleting),) = writer.announced
        assert (name, sorted(s.projected.external_id for s in sending), deleting) == (
            "transactions",
            ["5", "6"],
            [],
        )
        assert requests == [] and writer.recorded == [] and last_sent.remembered == []
        assert (sink.stats.announced, sink.stats.sent, sink.stats.windows) == (0, 0, 0)

        # The retry announces again and, acknowledged this time, sends.
        writer.fail = False
        await sink.process(window)
        assert len(writer.announced) == 2
        assert requests == ["POST /api/resources/shop_transactions"] * 2
        assert sorted(last_sent.remembered) == ["5", "6"]
        assert (sink.stats.announced, sink.stats.audited, sink.stats.sent) == (2, 2, 2)
