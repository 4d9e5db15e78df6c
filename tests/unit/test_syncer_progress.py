"""What the syncer tells readiness: per partition, where its finished windows end (or, before
the first finished, where its windows began) against the high watermark; not revoked ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from consumer.observe.progress import ProgressTracker
from consumer.router.dirty import Cause, DirtyKey, encode_dirty
from consumer.syncer.loop import Syncer, _Partition
from tests.shop_definition import shop_definition


@dataclass
class _Message:
    """A dirty-topic message, as the consumer hands it over."""

    _partition: int
    _offset: int

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return encode_dirty(DirtyKey("customers", self._offset, Cause(kind="cdc")))


class _Consumer:
    def __init__(self, highs: dict[int, int]) -> None:
        self.highs = highs

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        assert cached  # a local read, never a broker request from the loop
        return 0, self.highs[tp.partition]


def test_lag_counts_from_the_end_of_finished_windows_or_where_the_windows_began() -> None:
    nothing: Any = None
    progress = ProgressTracker("syncer")
    syncer = Syncer(shop_definition(), *[nothing] * 5, progress=progress)
    try:
        consumer: Any = _Consumer({0: 15, 1: 7, 2: 4, 3: 100})
        syncer._consumer = consumer
        syncer._partitions = {
            0: _Partition("d", 0, done_offset=10),
            1: _Partition("d", 1),  # windows in flight, none finished yet
            2: _Partition("d", 2),  # nothing read since it was assigned: lag unknown
            3: _Partition("d", 3, revoked=True),
        }
        messages: Any = [_Message(1, 3), _Message(1, 4)]
        syncer._add(messages)
        assert syncer._partitions[1].first_offset == 3
        syncer._observe_progress()
        view = progress.view()
        assert (view.assigned, view.lag) == (3, (15 - 10) + (7 - 3))
    finally:
        syncer._audit_flusher.shutdown(wait=True)
