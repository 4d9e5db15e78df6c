"""The outcome of an asynchronous commit (consumer/kafka.py ``commit_reporter``): a failed one is
logged and counted, a successful one says nothing."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, TopicPartition

from consumer.kafka import commit_reporter


def test_a_refused_commit_is_counted_and_logged_with_its_partitions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[None] = []
    report = commit_reporter("syncer", lambda: failures.append(None))
    error = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
    with caplog.at_level(logging.WARNING, logger="consumer.kafka"):
        report(error, [TopicPartition("d", 0, 10), TopicPartition("d", 1, 12)])
    assert len(failures) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"syncer commit of d [0, 1] failed: {error}"
    ]


def test_a_commit_that_succeeded_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    failures: list[None] = []
    report = commit_reporter("router", lambda: failures.append(None))
    with caplog.at_level(logging.DEBUG, logger="consumer.kafka"):
        report(None, [TopicPartition("s", 3, 99)])
    assert failures == []
    assert caplog.records == []
