"""Kafka plumbing shared by both stages: client settings in one place, and how a consumer leaves.

Offsets are committed only at reach-sync's own checkpoints (after the sink confirmed), so
auto-commit and the automatic offset store are off and cannot be switched on from the sync
definition. Everything else in ``client_settings`` is passed through to librdkafka.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, Message, TopicPartition

from consumer.config import KafkaSource

__all__ = [
    "CORRECTNESS_SETTINGS",
    "abandoned_consumers",
    "commit_within",
    "consume_batch",
    "consumer_settings",
    "producer_settings",
    "release_consumer",
]

# Settings reach-sync's guarantees depend on; a definition that sets them differently is refused.
CORRECTNESS_SETTINGS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}
_CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    # librdkafka waits fetch.queue.backoff.ms (1000 by default) before refilling a full
    # prefetch queue; a consumer that drains its queue quickly then idles (local-broker-notes.md).
    "fetch.queue.backoff.ms": 10,
    # Prefetch bounds. librdkafka's defaults (64 MiB queued, 100,000 messages, 50 MiB fetches)
    # let each consumer hold 150 MiB of a backlog; these held a bench's router at full speed
    # with ~60 MiB (bench/pipeline.py, peak RSS). A definition may raise them.
    "queued.max.messages.kbytes": 4096,
    "queued.min.messages": 10_000,
    "fetch.max.bytes": 2 * 1024 * 1024,
    "max.partition.fetch.bytes": 256 * 1024,
}
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
}

# A consumer's close (LeaveGroup, final fetch teardown) is given this long; with the broker gone
# it can wait for the coordinator indefinitely.
CLOSE_BOUND_S = 15.0

T = TypeVar("T")
log = logging.getLogger(__name__)

# Consumers left without a LeaveGroup (see release_consumer); kept referenced so that garbage
# collection cannot close them before the process ends.
_abandoned: list[Consumer] = []


def _checked(settings: dict[str, Any]) -> dict[str, Any]:
    for key, required in CORRECTNESS_SETTINGS.items():
        if key in settings and settings[key] != required:
            raise ValueError(f"source.kafka.client_settings.{key} must stay {required!r}")
    return settings


# librdkafka's own log lines go through Python logging (structured, filterable) instead of
# straight to stderr.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def consumer_settings(kafka: KafkaSource, group_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka consumer settings: our defaults, then the definition's, then the caller's."""
    return {
        "logger": _LIBRDKAFKA_LOG,
        **_CONSUMER_DEFAULTS,
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": group_id,
        "session.timeout.ms": kafka.session_timeout_ms,
        **_checked(dict(kafka.client_settings)),
        **overrides,
        **CORRECTNESS_SETTINGS,
    }


def producer_settings(kafka: KafkaSource, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all: a produce that was acknowledged is durable and not duplicated."""
    return {
        "logger": _LIBRDKAFKA_LOG,
        **_PRODUCER_DEFAULTS,
        "bootstrap.servers": kafka.bootstrap_servers,
        **kafka.client_settings,
        **overrides,
    }


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
