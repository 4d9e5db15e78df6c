"""Kafka plumbing shared by both stages: client settings in one place, and how a consumer leaves.

Offsets are committed only at reach-sync's own checkpoints (after the sink confirmed), so
auto-commit and the automatic offset store are off and cannot be switched on from the sync
definition; nor can the settings reach-sync takes from the definition's own fields. Everything
else in ``client_settings`` is passed through to librdkafka. The rules, the defaults and the check
the definition's model makes of ``client_settings`` are in consumer/kafka_settings.py.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from consumer.config import KafkaSource
from consumer.kafka_settings import (
    CONSUMER_DEFAULTS,
    CORRECTNESS_SETTINGS,
    PRODUCER_DEFAULTS,
    rule_problems,
)

__all__ = [
    "CORRECTNESS_SETTINGS",
    "abandoned_consumers",
    "commit_in_rebalance",
    "commit_reporter",
    "commit_within",
    "consume_batch",
    "consumer_settings",
    "describe_partitions",
    "producer_settings",
    "release_consumer",
]

# A consumer's close (LeaveGroup, final fetch teardown) is given this long; with the broker gone
# it can wait for the coordinator indefinitely.
CLOSE_BOUND_S = 15.0

T = TypeVar("T")
log = logging.getLogger(__name__)

# Consumers left without a LeaveGroup (see release_consumer); kept referenced so that garbage
# collection cannot close them before the process ends.
_abandoned: list[Consumer] = []


def _checked(settings: dict[str, Any]) -> dict[str, Any]:
    """The definition's model refuses these already; this keeps a hand-built one honest."""
    problems = rule_problems(settings)
    if problems:
        raise ValueError(f"source.kafka.client_settings: {'; '.join(problems)}")
    return settings


# librdkafka's own log lines go through Python logging (structured, filterable) instead of
# straight to stderr.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def consumer_settings(kafka: KafkaSource, group_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka consumer settings: our defaults, then the definition's, then the caller's."""
    return {
        "logger": _LIBRDKAFKA_LOG,
        **CONSUMER_DEFAULTS,
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": group_id,
        "session.timeout.ms": kafka.session_timeout_ms,
        **_checked(dict(kafka.client_settings)),
        **_checked(dict(kafka.consumer_settings)),
        **overrides,
        **CORRECTNESS_SETTINGS,
    }


def producer_settings(kafka: KafkaSource, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all: a produce that was acknowledged is durable and not duplicated."""
    return {
        "logger": _LIBRDKAFKA_LOG,
        **PRODUCER_DEFAULTS,
        "bootstrap.servers": kafka.bootstrap_servers,
        **kafka.client_settings,
        **overrides,
    }


def describe_partitions(partitions: Iterable[tuple[str, int]]) -> str:
    """``shop.public.customers [0-3], shop.public.transactions [0, 2]``: topics in order, each
    one's partitions with consecutive runs folded, for a log line of an assignment."""
    by_topic: dict[str, set[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, set()).add(partition)
    described = []
    for topic in sorted(by_topic):
        runs: list[list[int]] = []
        for partition in sorted(by_topic[topic]):
            if runs and partition == runs[-1][-1] + 1:
                runs[-1].append(partition)
            else:
                runs.append([partition])
        folded = ", ".join(
            f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs
        )
        described.append(f"{topic} [{folded}]")
    return ", ".join(described) or "nothing"


def consume_batch(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Wait up to ``timeout_s`` for one message, then take what is already fetched.

    ``Consumer.consume(n, timeout)`` waits for all ``n`` or the whole timeout, so under a light
    load every batch costs the full timeout in latency. Here a batch is whatever arrived: one
    message when traffic is light, ``max_messages`` when there is a backlog.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


def commit_within(
    consumer: Consumer, offsets: list[TopicPartition], timeout_s: float
) -> list[TopicPartition] | None:
    """Commit synchronously, but give up after ``timeout_s`` and return None.

    librdkafka's synchronous commit waits for the group coordinator with no deadline of its own:
    with the broker gone it never returns (a stopped ``reach-sync run`` once spun for 1.5 h in its
    final commit). A commit that did not return leaves the consumer abandoned (see ``_bounded``).
    Errors of a commit that returned are raised.
    """
    done, result = _bounded(
        consumer, lambda: consumer.commit(offsets=offsets, asynchronous=False), timeout_s
    )
    return result if done else None


def commit_in_rebalance(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Commit the final offsets of revoked partitions from inside the revoke callback.

    A synchronous commit made from another thread while the poll thread is inside a rebalance
    callback is not answered until the callback returns: ``commit_within`` there waited its
    whole bound each time, and the group's rebalance with it (tests/e2e/test_rebalance.py). A
    synchronous commit on the poll thread itself would have no deadline at all. So the commit
    is asynchronous, made on the callback's thread: librdkafka sends it to the coordinator
    before the member rejoins, on the same connection, so it is handled before the partitions
    can be handed to another member. Its outcome reaches the consumer's ``on_commit``; a failed
    one means the next owner reads some events again, which every stage tolerates.
    """
    if offsets:
        consumer.commit(offsets=offsets, asynchronous=True)


def commit_reporter(
    stage: str, failed: Callable[[], None]
) -> Callable[[KafkaError | None, list[TopicPartition]], None]:
    """An ``on_commit`` callback for a stage's consumer: librdkafka reports each asynchronous
    commit's outcome through it (from ``poll``); a failed one is logged and counted (``failed``)
    rather than lost. The offsets stay uncommitted until a later commit covers them."""

    def report(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        refused = [tp for tp in partitions if tp.error is not None]
        if error is None and not refused:
            return
        failed()
        reason = error if error is not None else refused[0].error
        log.warning(
            "%s commit of %s failed: %s",
            stage,
            describe_partitions((tp.topic, tp.partition) for tp in refused or partitions),
            reason,
        )

    return report


def release_consumer(
    consumer: Consumer, leave_group: bool, timeout_s: float = CLOSE_BOUND_S
) -> None:
    """Leave the group (real Kafka: a fast rebalance) or just stop using the consumer.

    The local broker mishandles a LeaveGroup from a group leader during a rebalance and then never
    assigns the group again (docs/local-broker-group-rejoin.md); there, a consumer is released
    without one and the broker evicts it after the session timeout. A consumer that a bounded
    call already gave up on is released the same way, and so is one whose close does not return
    within ``timeout_s`` (a broker that is gone).
    """
    if any(c is consumer for c in _abandoned):
        return
    if leave_group:
        _bounded(consumer, consumer.close, timeout_s)
    else:
        _abandoned.append(consumer)


def _bounded(consumer: Consumer, call: Callable[[], T], timeout_s: float) -> tuple[bool, T | None]:
    """Run a blocking consumer call on a daemon thread and wait at most ``timeout_s``: (True,
    its result), its exception raised, or (False, None) when it did not return.

    A call that did not return is still inside librdkafka, where closing or destroying the
    consumer is not safe: the consumer joins the abandoned ones, which nothing closes, and the
    process must end with ``os._exit`` (see ``abandoned_consumers``)."""
    outcome: queue.SimpleQueue[tuple[T] | BaseException] = queue.SimpleQueue()

    def run() -> None:
        try:
            outcome.put((call(),))
        except BaseException as exc:  # handed to the waiting caller
            outcome.put(exc)

    threading.Thread(target=run, name="kafka-bounded-call", daemon=True).start()
    try:
        result = outcome.get(timeout=timeout_s)
    except queue.Empty:
        log.error(
            "a consumer call did not return within %.0f s; the consumer is abandoned", timeout_s
        )
        if not any(c is consumer for c in _abandoned):
            _abandoned.append(consumer)
        return False, None
    if isinstance(result, BaseException):
        raise result
    return True, result[0]


def abandoned_consumers() -> int:
    """How many consumers were released without leaving; the process must then end with
    ``os._exit`` so that no destructor sends the LeaveGroup after all."""
    return len(_abandoned)
