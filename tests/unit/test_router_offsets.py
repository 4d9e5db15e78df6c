"""The router commits a source offset only once every dirty key up to it was acknowledged, also
while it routes the next batch and when partitions are revoked meanwhile; and it holds one
batch of source events at a time. Driven through the router's public seams (its Kafka clients'
factories), with stand-ins that hand over messages and report deliveries as librdkafka does;
nothing here connects anywhere."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.router.dirty import decode_dirty
from consumer.router.lookups import LookupDatabase
from consumer.router.loop import Router, RouterStats
from tests.kafka_messages import StubMessage
from tests.shop_definition import shop_definition

TOPIC = "shop.public.customers"


def _change(customer: int) -> tuple[bytes, bytes]:
    key = orjson.dumps({"id": customer})
    value = orjson.dumps(
        {
            "op": "u",
            "source": {"schema": "public", "table": "customers", "ts_ms": 1, "lsn": customer},
            "before": None,
            "after": {"id": customer, "email": f"c{customer}@example.com"},
        }
    )
    return key, value


class _Consumer:
    """The source topic's partitions as logs with a position each: assigned on the first poll,
    read in batches of four, moved back by ``seek``; at the ``revoke_at``-th poll, the
    partitions in ``revoke`` are revoked (the callback runs inside that poll, as librdkafka's
    does) and never read again. Every message is made when it is handed over, so the router's
    references are the only ones; ``alive_at_poll`` says, at each poll, how many messages of
    earlier polls were still alive."""

    def __init__(
        self,
        logs: dict[int, list[tuple[bytes, bytes]]],
        events: list[str],
        revoke: tuple[int, ...] = (),
        revoke_at: int = 0,
        lost: bool = False,
        fail_commits: int = 0,
    ) -> None:
        self.logs = logs
        self.fail_commits = fail_commits  # the first ones fail, as with the coordinator gone
        self.position = dict.fromkeys(logs, 0)
        self.events = events
        self.revoke, self.revoke_at = revoke, revoke_at
        self.lost = lost  # the partitions are lost (another member may own them), not revoked
        self.polls = 0
        self.alive_at_poll: list[int] = []
        self._handed: list[weakref.ref[StubMessage]] = []
        self._callbacks: dict[str, Callable[..., None]] = {}
        self._on_assign: Callable[..., None] | None = None

    def subscribe(self, topics: Any, **callbacks: Callable[..., None]) -> None:
        self._callbacks = callbacks
        self._on_assign = callbacks["on_assign"]

    def _take(self, count: int) -> list[StubMessage]:
        taken: list[StubMessage] = []
        for partition, log in self.logs.items():
            while len(taken) < count and self.position[partition] < len(log):
                offset = self.position[partition]
                taken.append(StubMessage(TOPIC, partition, offset, *log[offset]))
                self.position[partition] += 1
        self._handed += [weakref.ref(m) for m in taken]
        return taken

    def poll(self, timeout: float) -> StubMessage | None:
        if self._on_assign is not None:
            assign, self._on_assign = self._on_assign, None
            assign(self, [TopicPartition(TOPIC, p) for p in self.logs])
        self.polls += 1
        if self.polls == self.revoke_at:
            kind = "lost" if self.lost else "revoke"
            self.events.append(f"{kind} {' '.join(map(str, self.revoke))}")
            self._callbacks[f"on_{kind}"](self, [TopicPartition(TOPIC, p) for p in self.revoke])
            for partition in self.revoke:
                del self.logs[partition]
        self.alive_at_poll.append(sum(ref() is not None for ref in self._handed))
        taken = self._take(1)
        if not taken:
            threading.Event().wait(min(timeout, 0.01))
            return None
        return taken[0]

    def consume(self, num_messages: int, timeout: float) -> list[StubMessage]:
        """The rest of a batch of four, after the poll's message; logged as one batch."""
        polled = self._handed[-1]()
        taken = self._take(min(num_messages, 3))
        assert polled is not None  # the router holds it
        batch = " ".join(f"{m.partition()}@{m.offset()}" for m in [polled, *taken])
        self.events.append(f"consumed {batch}")
        return taken

    def seek(self, tp: TopicPartition) -> None:
        self.events.append(f"seek {tp.partition}@{tp.offset}")
        self.position[tp.partition] = tp.offset

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            self.events += [f"failed commit {tp.partition}@{tp.offset}" for tp in offsets]
            raise KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))
        self.events += [f"commit {tp.partition}@{tp.offset}" for tp in offsets]
        return offsets

    def close(self) -> None: ...


class _Producer:
    """Queues what is produced; a flush reports the queue's outcomes through the settings'
    ``on_delivery``, for errors only (``delivery.report.only.error``), refusing ``refuse``
    dirty keys after the first ``refuse_after``."""

    def __init__(
        self, settings: dict[str, Any], refuse: int, events: list[str], refuse_after: int = 0
    ) -> None:
        self.on_delivery = settings["on_delivery"]
        self.refuse, self.events = refuse, events
        self.refuse_after = refuse_after
        self.queued: list[bytes] = []
        self.acknowledged: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
        self.events.append(f"produced {decode_dirty(value).id}")
        self.queued.append(value)

    def flush(self, timeout: float) -> int:
        queued, self.queued = self.queued, []
        for value in queued:
            entity = decode_dirty(value).id
            if self.refuse_after > 0:
                self.refuse_after -= 1
                self.events.append(f"ack {entity}")
                self.acknowledged.append(value)
            elif self.refuse > 0:
                self.refuse -= 1
                self.events.append(f"refused {entity}")
                self.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.events.append(f"ack {entity}")
                self.acknowledged.append(value)
        return 0

    def poll(self, timeout: float) -> int:
        return 0


def _no_database() -> Any:
    raise AssertionError("the shop's triggers have no lookup: nothing may connect")


def _route(
    logs: dict[int, list[tuple[bytes, bytes]]],
    refuse: int,
    done: Callable[[RouterStats], bool],
    revoke: tuple[int, ...] = (),
    revoke_at: int = 0,
    lost: bool = False,
    fail_commits: int = 0,
    refuse_after: int = 0,
) -> tuple[_Consumer, _Producer, RouterStats]:
    """Run a router on the stand-ins until ``done`` says so (or 10 s passed)."""
    definition = shop_definition()
    events: list[str] = []
    consumer = _Consumer(logs, events, revoke, revoke_at, lost, fail_commits)
    producers: list[_Producer] = []

    def make_producer(settings: dict[str, Any]) -> Any:
        producers.append(_Producer(settings, refuse, events, refuse_after))
        return producers[-1]

    stop = threading.Event()
    seen: list[RouterStats] = []

    def on_stats(stats: RouterStats) -> None:
        seen.append(stats)
        if done(stats):
            stop.set()

    router = Router(
        definition,
        LookupDatabase(definition.source.database, connect=_no_database),
        on_stats,
        consumer_factory=lambda settings: consumer,  # type: ignore[arg-type,return-value]
        producer_factory=make_producer,
    )
    timer = threading.Timer(10.0, stop.set)
    timer.start()
    try:
        router.run(stop)
    finally:
        timer.cancel()
        router.close()
    assert seen, "the router reported nothing in 10 s"
    return consumer, producers[0], seen[-1]


def _only(events: list[str], *kinds: str) -> list[str]:
    return [e for e in events if e.split()[0] in kinds]


def _customers(*ids: int) -> list[tuple[bytes, bytes]]:
    return [_change(c) for c in ids]


def test_a_refused_dirty_key_rewinds_its_batch_and_nothing_is_committed_before_the_retry() -> None:
    logs = {0: _customers(1, 2), 1: _customers(3, 4)}
    consumer, producer, stats = _route(logs, refuse=1, done=lambda s: s.commits >= 1)

    events = _only(consumer.events, "ack", "refused", "seek", "commit")
    first_commit = next(n for n, e in enumerate(events) if e.startswith("commit"))
    # The first attempt: one key refused, so the batch is read again from where it began.
    assert events[:4] == ["refused 1", "ack 2", "ack 3", "ack 4"]
    assert sorted(events[4:6]) == ["seek 0@0", "seek 1@0"]
    # The retry's keys are all acknowledged before the first commit, which covers both logs.
    assert sorted(events[6:first_commit]) == ["ack 1", "ack 2", "ack 3", "ack 4"]
    assert sorted(events[first_commit:]) == ["commit 0@2", "commit 1@2"]
    assert stats.retries == 1
    assert sorted(decode_dirty(v).id for v in producer.acknowledged[-4:]) == [1, 2, 3, 4]


def test_the_next_batch_is_routed_while_one_is_acknowledged_and_produced_after_its_commit() -> None:
    logs = {0: _customers(1, 2, 3, 4, 5, 6)}
    consumer, _, _ = _route(logs, refuse=0, done=lambda s: s.events >= 6)

    assert _only(consumer.events, "consumed", "produced", "ack", "commit") == [
        "consumed 0@0 0@1 0@2 0@3",
        *[f"produced {c}" for c in (1, 2, 3, 4)],
        "consumed 0@4 0@5",  # before the first batch is settled
        *[f"ack {c}" for c in (1, 2, 3, 4)],
        "commit 0@4",
        "produced 5",  # only once the batch before it is committed
        "produced 6",
        "ack 5",
        "ack 6",
        "commit 0@6",
    ]


def test_a_refused_key_of_the_batch_in_flight_rewinds_it_and_the_batch_read_after_it() -> None:
    # Batches of four: partition 0's events first, then partition 1's, which only the second
    # batch holds.
    logs = {0: _customers(1, 2, 3, 4), 1: _customers(5, 6)}
    consumer, _, stats = _route(logs, refuse=1, done=lambda s: s.events >= 6 and s.batches >= 2)

    events = _only(consumer.events, "consumed", "refused", "seek", "ack", "commit")
    assert events[:3] == ["consumed 0@0 0@1 0@2 0@3", "consumed 1@0 1@1", "refused 1"]
    rewound = events.index("refused 1") + 4  # the batch's other three keys are acknowledged
    assert sorted(events[rewound : rewound + 2]) == ["seek 0@0", "seek 1@0"]
    commits = _only(events, "commit")
    assert commits == ["commit 0@4", "commit 1@2"]
    # Nothing was committed before the retry's acknowledgements of the first batch.
    assert events.index("commit 0@4") > max(
        n for n, e in enumerate(events) if e in {"ack 1", "ack 2", "ack 3", "ack 4"}
    )
    assert stats.retries == 1


def test_a_revoke_settles_the_batch_in_flight_and_commits_the_revoked_partitions() -> None:
    logs = {0: _customers(1, 2, 3, 4), 1: _customers(5, 6, 7, 8)}
    consumer, _, _ = _route(logs, refuse=0, done=lambda s: s.events >= 8, revoke=(0,), revoke_at=2)

    events = _only(consumer.events, "consumed", "revoke", "produced", "ack", "commit")
    assert events == [
        "consumed 0@0 0@1 0@2 0@3",
        *[f"produced {c}" for c in (1, 2, 3, 4)],
        "revoke 0",
        *[f"ack {c}" for c in (1, 2, 3, 4)],
        "commit 0@4",  # in the callback, before the partition is given up
        "consumed 1@0 1@1 1@2 1@3",
        *[f"produced {c}" for c in (5, 6, 7, 8)],
        *[f"ack {c}" for c in (5, 6, 7, 8)],
        "commit 1@4",
    ]


def test_a_batch_in_flight_that_fails_during_a_revoke_is_never_committed_and_is_routed_again() -> (
    None
):
    logs = {0: _customers(1, 2), 1: _customers(3, 4), 2: _customers(5, 6)}
    consumer, _, stats = _route(
        logs, refuse=1, done=lambda s: s.batches >= 1, revoke=(1,), revoke_at=2
    )

    events = _only(consumer.events, "consumed", "revoke", "refused", "seek", "ack", "commit")
    assert events[:3] == ["consumed 0@0 0@1 1@0 1@1", "revoke 1", "refused 1"]
    # Nothing of the revoked partition is committed: its next owner reads it from its last
    # commit. The partitions kept are read again from the failed batch's first events.
    assert not [e for e in events if e.startswith(("commit 1@", "seek 1@"))]
    assert sorted(_only(events, "seek")) == ["seek 0@0", "seek 2@0"]
    assert sorted(_only(events, "commit")) == ["commit 0@2", "commit 2@2"]
    assert events.index("commit 0@2") > events.index("seek 0@0")
    assert stats.retries == 1


def test_a_partition_lost_while_its_batch_is_in_flight_is_never_committed() -> None:
    logs = {0: _customers(1, 2), 1: _customers(3, 4)}
    consumer, _, _ = _route(
        logs, refuse=0, done=lambda s: s.batches >= 1, revoke=(1,), revoke_at=2, lost=True
    )

    events = _only(consumer.events, "consumed", "lost", "ack", "commit")
    assert events == [
        "consumed 0@0 0@1 1@0 1@1",
        "lost 1",
        *[f"ack {c}" for c in (1, 2, 3, 4)],
        "commit 0@2",  # and no commit of partition 1, which may be another member's by now
    ]


def test_a_stop_commits_what_was_acknowledged_before_the_failed_batch_in_flight() -> None:
    # The first batch is acknowledged but its commit fails; the second is in flight at the
    # stop, and refused.
    logs = {0: _customers(*range(1, 9))}
    consumer, _, _ = _route(
        logs, refuse=4, refuse_after=4, fail_commits=1, done=lambda s: s.batches >= 1
    )

    events = _only(consumer.events, "failed", "refused", "commit")
    assert events == [
        "failed commit 0@4",
        *[f"refused {c}" for c in (5, 6, 7, 8)],
        "commit 0@4",  # at the stop: acknowledged, before the failed batch
    ]


def test_a_routed_batch_is_let_go_before_the_next_one_is_consumed() -> None:
    logs = {0: _customers(*range(1, 13))}
    consumer, producer, stats = _route(logs, refuse=0, done=lambda s: s.events >= 12)

    assert stats.batches == 3  # batches of 4
    # Each poll after the first: the messages of the batches before it are gone.
    assert consumer.alive_at_poll[:3] == [0, 0, 0]
    assert len(producer.acknowledged) == 12
