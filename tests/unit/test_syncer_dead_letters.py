"""The syncer's dead letters are outcomes: a window commits past a message only once the
dead-letter topic acknowledged that message's letter, whichever window's flush served the
acknowledgement, and however many attempts it took."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from consumer.records.deadletter import HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.loop import Syncer
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window
from tests.kafka_messages import StubMessage
from tests.shop_definition import shop_definition

DIRTY = "t.dirty"


def _dirty_message(offset: int, value: bytes, partition: int = 0) -> StubMessage:
    """A dirty-topic message."""
    return StubMessage(DIRTY, partition, offset, b"k", value)


class _Consumer:
    """Assigns the messages' partitions on the first poll and hands the messages over once;
    keeps commits, in ``log`` too."""

    def __init__(self, messages: list[StubMessage], log: list[tuple[str, int, int]]) -> None:
        self.messages = messages
        self.partitions = sorted({m.partition() for m in messages})
        self.commits: list[list[tuple[int, int]]] = []
        self.log = log
        self._on_assign: Callable[..., None] | None = None

    def subscribe(self, topics: list[str], **callbacks: Callable[..., None]) -> None:
        self._on_assign = callbacks["on_assign"]

    def poll(self, timeout: float) -> StubMessage | None:
        if self._on_assign is not None:
            assign, self._on_assign = self._on_assign, None
            assign(self, [TopicPartition(DIRTY, p) for p in self.partitions])
        if self.messages:
            return self.messages.pop(0)
        threading.Event().wait(min(timeout, 0.01))
        return None

    def consume(self, num_messages: int, timeout: float) -> list[StubMessage]:
        taken, self.messages = self.messages, []
        return taken

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])
        self.log += [("commit", tp.partition, tp.offset) for tp in offsets]
        return offsets

    def pause(self, partitions: Any) -> None: ...

    def resume(self, partitions: Any) -> None: ...

    def close(self) -> None: ...


class _Producer:
    """The dead-letter producer: a flush reports every letter queued, whoever produced it, as
    librdkafka serves delivery reports; it refuses the first ``refuse`` letters of the
    partitions in ``refusing`` (every partition when None). ``linger_s``: a flush waits that
    long before it takes the queue, so that windows flushing at once share one."""

    def __init__(
        self,
        refuse: int,
        log: list[tuple[str, int, int]],
        refusing: set[int] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self.refuse, self.refusing, self.linger_s = refuse, refusing, linger_s
        self.log = log
        self.queued: list[tuple[dict[str, Any], Callable[[KafkaError | None, Any], None]]] = []
        self.acknowledged: list[dict[str, Any]] = []  # each letter's headers
        self.flushes = 0
        self.lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: Any, headers: Any, on_delivery: Any) -> None:
        with self.lock:
            self.queued.append((dict(headers), on_delivery))

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        threading.Event().wait(self.linger_s)
        with self.lock:
            queued, self.queued = self.queued, []
            for headers, report in queued:
                partition = int(headers[HEADER_PARTITION])
                if self.refuse > 0 and (self.refusing is None or partition in self.refusing):
                    self.refuse -= 1
                    report(KafkaError(KafkaError._MSG_TIMED_OUT), None)
                else:
                    self.acknowledged.append(headers)
                    self.log.append(("ack", partition, int(headers[HEADER_OFFSET])))
                    report(None, None)
        return 0


async def _run_until(syncer: Syncer, done: Callable[[], bool]) -> None:
    stop = threading.Event()
    task = asyncio.create_task(syncer.run(stop))
    try:
        for _ in range(1_000):
            if done():
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def _syncer(producer: _Producer, consumer: _Consumer) -> Syncer:
    definition = shop_definition()
    blocks = TenantBlocks(definition.destination.tenant_probe)
    nothing: Any = None
    sink = WindowSink(
        definition,
        client=nothing,
        db=nothing,
        last_sent=nothing,
        producer=producer,  # type: ignore[arg-type]
        audit=nothing,
        gate=blocks,
        stats=SyncerStats(),
    )
    return Syncer(definition, sink, blocks, consumer_factory=lambda _: consumer)  # type: ignore[arg-type,return-value]


async def test_an_unreadable_dirty_key_is_committed_only_once_its_dead_letter_is_acked() -> None:
    """The first delivery of the letter fails: the window is retried, and the retry must
    produce the letter again, not commit past a message whose letter the broker never took."""
    log: list[tuple[str, int, int]] = []
    producer = _Producer(refuse=1, log=log)
    consumer = _Consumer([_dirty_message(5, b"not a dirty key")], log)
    syncer = _syncer(producer, consumer)
    await _run_until(syncer, lambda: bool(consumer.commits))
    assert consumer.commits, "the window was never committed"
    assert consumer.commits[-1] == [(0, 6)]
    assert syncer.stats.retries >= 1
    (letter,) = producer.acknowledged
    assert (letter[HEADER_TOPIC], letter[HEADER_OFFSET]) == (DIRTY.encode(), b"5")


async def test_a_refused_letter_fails_its_own_window_whichever_flush_served_its_report() -> None:
    """Two partitions' windows flush at once and one flush serves both reports: the refused
    letter of partition 1 must fail partition 1's window, not partition 0's."""
    log: list[tuple[str, int, int]] = []
    producer = _Producer(refuse=1, log=log, refusing={1}, linger_s=0.05)
    messages = [_dirty_message(5, b"not a dirty key", 0), _dirty_message(7, b"nor this", 1)]
    consumer = _Consumer(messages, log)
    syncer = _syncer(producer, consumer)
    await _run_until(syncer, lambda: {("commit", 0, 6), ("commit", 1, 8)} <= set(log))
    for partition, offset in ((0, 5), (1, 7)):
        committed = log.index(("commit", partition, offset + 1))
        assert ("ack", partition, offset) in log[:committed], log
    assert sorted(int(h[HEADER_PARTITION]) for h in producer.acknowledged) == [0, 1]


async def test_a_letter_acknowledged_once_is_not_produced_again_on_a_retry() -> None:
    """The window's first attempt fails after its letter was acknowledged (the other letter
    was refused): the retry produces only the refused one."""
    log: list[tuple[str, int, int]] = []
    producer = _Producer(refuse=1, log=log)
    messages = [_dirty_message(5, b"not a dirty key"), _dirty_message(6, b"nor this")]
    consumer = _Consumer(messages, log)
    syncer = _syncer(producer, consumer)
    await _run_until(syncer, lambda: ("commit", 0, 7) in log)
    assert [int(h[HEADER_OFFSET]) for h in producer.acknowledged] == [6, 5]
    assert syncer.stats.dead_lettered == 2


async def test_a_window_without_dead_letters_waits_for_no_flush() -> None:
    log: list[tuple[str, int, int]] = []
    producer = _Producer(refuse=0, log=log)
    syncer = _syncer(producer, _Consumer([], log))
    await syncer.sink.process(Window(opened_at=0.0, due_after_s=0.1))
    syncer.sink.close()
    assert producer.flushes == 0
