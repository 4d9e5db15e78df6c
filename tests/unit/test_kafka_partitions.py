"""How an assignment is written in the log (consumer/kafka.py ``describe_partitions``)."""

from __future__ import annotations

from consumer.kafka import describe_partitions


def test_partitions_are_grouped_by_topic_with_runs_folded() -> None:
    assigned = [("t.b", 2), ("t.a", 3), ("t.a", 0), ("t.a", 1), ("t.a", 2), ("t.b", 0), ("t.a", 7)]
    assert describe_partitions(assigned) == "t.a [0-3, 7], t.b [0, 2]"


def test_two_in_a_row_are_listed_and_nothing_is_said() -> None:
    assert describe_partitions([("t", 4), ("t", 5)]) == "t [4, 5]"
    assert describe_partitions([]) == "nothing"
