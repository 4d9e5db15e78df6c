"""How the window sink audits what delivery reports: each entity with its window's causes, and
one flush of the audit writer at a time, shared by the windows whose records it covers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from consumer.errors import Retryable
from consumer.router.dirty import Cause, DirtyKey
from consumer.sink.outcomes import Removed, Sent
from consumer.sink.projection import project
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window
from tests.shop_definition import shop_definition


class _Writer:
    """AuditWriter's interface: ``record`` keeps what it got; ``flush`` blocks until the test
    releases it, then succeeds or raises as told."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, list[Sent], list[Removed]]] = []
        self.flushes = 0
        self.flushed_records: list[int] = []  # how many were recorded when each flush began
        self.release = threading.Event()
        self.fail = False

    def record(
        self, name: str, accepted: Iterable[Sent] = (), deleted: Iterable[Removed] = ()
    ) -> int:
        self.recorded.append((name, list(accepted), list(deleted)))
        return len(self.recorded[-1][1]) + len(self.recorded[-1][2])

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
