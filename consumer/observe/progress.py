"""Progress per partition of each stage: where it got to, its lag, and since when it has not moved.

Observed by the thread that already uses each consumer (the router's loop, the syncer's event
loop), at most once a second; readiness (health.py) and the lag metric (metrics.py) only read
it. Nothing here calls a consumer from another thread: confluent-kafka's ``close()`` frees the
client with the GIL released before it marks itself closed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

__all__ = [
    "OBSERVE_INTERVAL_S",
    "PartitionProgress",
    "PartitionState",
    "ProgressTracker",
    "StageProgress",
    "high_watermark",
]

# How often a stage's loop records its partitions' progress (a few reads of librdkafka's
# cached state each time).
OBSERVE_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One assigned partition as its stage sees it."""

    topic: str
    partition: int
    # The next offset not finished yet (router: its position, every batch before it committed;
    # syncer: the end of its finished windows). None: not known yet (nothing consumed since the
    # partition was assigned, or just rewound); the last known value is kept then.
    done: int | None
    # The partition's high watermark as of the consumer's last fetch; None before the first.
    high: int | None


@dataclass(frozen=True, slots=True)
class StageProgress:
    """One stage's view for readiness (monotonic times)."""

    name: str
    assigned: int
    lag: int
    # Among the partitions with lag, the oldest time one of them last moved (advanced, or was
    # caught up); None when none lags.
    lagging_since: float | None
    # When the stage's loop last recorded its progress; None before it first did.
    observed_at: float | None
    # Each assigned partition, by topic and partition (for ``reach-sync status``).
    partitions: tuple[PartitionState, ...] = ()


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One assigned partition in a stage's view: its done offset, lag and, when it lags, the
    last time it moved (monotonic)."""

    topic: str
    partition: int
    done: int | None
    lag: int
    lagging_since: float | None


@dataclass(slots=True)
class _Moving:
    done: int | None
    lag: int
    moved_at: float


class ProgressTracker:
    """Per partition of one stage: where it got to and since when it has lagged without moving.

    The stage's loop calls ``due`` and ``observe``; any thread may call ``view``. A partition
    counts as moving whenever its done offset changes or it has no lag, so an idle partition
    that receives one message is not stalled by the quiet before it; a partition that lags and
    does not move for ``stall_after_s`` is a stall (``assess``). A held entity (its tenant
    refused) does not hold the syncer's done offset back (only its commits), so a blocked
    tenant alone is no stall.
    """

    def __init__(self, name: str, interval_s: float = OBSERVE_INTERVAL_S) -> None:
        self._name = name
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._partitions: dict[tuple[str, int], _Moving] = {}
        self._observed_at: float | None = None

    def due(self, now: float) -> bool:
        return self._observed_at is None or now - self._observed_at >= self._interval_s

    def observe(self, partitions: Iterable[PartitionProgress], now: float) -> None:
        """Record the assigned partitions as of ``now``; partitions left out are no longer
        assigned."""
        with self._lock:
            previous, self._partitions = self._partitions, {}
            for p in partitions:
                key = (p.topic, p.partition)
                before = previous.get(key)
                done = p.done if p.done is not None or before is None else before.done
                lag = max(0, p.high - done) if done is not None and p.high is not None else 0
                moved_at = now
                if before is not None and lag > 0 and done == before.done:
                    moved_at = before.moved_at  # lagging, and not moved since
                self._partitions[key] = _Moving(done, lag, moved_at)
            self._observed_at = now

    def view(self) -> StageProgress:
        with self._lock:
            by_key = sorted(self._partitions.items())
            observed_at = self._observed_at
        parts = [p for _, p in by_key]
        lagging = [p.moved_at for p in parts if p.lag > 0]
        return StageProgress(
            self._name,
            assigned=len(parts),
            lag=sum(p.lag for p in parts),
            lagging_since=min(lagging, default=None),
            observed_at=observed_at,
            partitions=tuple(
                PartitionState(t, n, p.done, p.lag, p.moved_at if p.lag > 0 else None)
                for (t, n), p in by_key
            ),
        )


def high_watermark(consumer: Consumer, topic: str, partition: int) -> int | None:
    """The partition's high watermark from the consumer's last fetch (no broker request);
    None before the first fetch. Call it only from a thread that uses ``consumer`` anyway."""
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    except KafkaException:
        return None
    return int(high) if high >= 0 else None
