"""What the syncer tells readiness: per partition, where its finished windows end (or, before
the first finished, where its windows began) against the high watermark."""

from __future__ import annotations

import time

from consumer.observe.progress import ProgressTracker
from consumer.syncer.loop import revoke_bound_s
from consumer.syncer.partitions import Partition


def test_lag_counts_from_the_end_of_finished_windows_or_where_the_windows_began() -> None:
    finished = Partition("d", 0, done_offset=10)
    in_flight = Partition("d", 1)  # windows in flight, none finished yet
    quiet = Partition("d", 2)  # nothing read since it was assigned: lag unknown
    for offset in (3, 4):
        in_flight.read(offset)
    assert in_flight.first_offset == 3

    progress = ProgressTracker("syncer")
    highs = {0: 15, 1: 7, 2: 4}
    parts = (finished, in_flight, quiet)
    progress.observe([p.progress(highs[p.partition]) for p in parts], time.monotonic())
    view = progress.view()
    assert (view.assigned, view.lag) == (3, (15 - 10) + (7 - 3))
    assert quiet.progress(4).done is None


def test_the_first_offset_read_since_the_assignment_is_where_the_windows_began() -> None:
    part = Partition("d", 5)
    part.read(9)
    part.read(8)
    assert part.progress(20).done == 9


def test_the_revoke_bound_follows_max_poll_interval() -> None:
    assert revoke_bound_s({}) == 60.0  # librdkafka's default, 300 s
    assert revoke_bound_s({"max.poll.interval.ms": 30_000}) == 6.0
    assert revoke_bound_s({"max.poll.interval.ms": "600000"}) == 120.0
