"""The scheduler: at each tick of a scheduled resource, one run sends every entity that changed
since the last run, once, through the window sink (the batch endpoint).

A run, under the resource's Redis lock (one process of the group runs it): read the scheduled
topic from the resource's committed offsets, every partition assigned (no group join), taking
the keys written before the run started; coalesce them into windows of ``max_keys`` entities,
one window at a time; process each (retried with backoff until it succeeds or the service
stops), write entities Reach held back to the topic for the next run, then commit. The record
in Redis (runs.py) says which tick was served, so a tick missed by a stopped or dead process
runs at once when one starts. The long story: docs/design.md, "Scheduled delivery".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from redis.asyncio import Redis

from consumer.config import SyncDefinition
from consumer.errors import ConfigurationError, Retryable, SyncError
from consumer.kafka import commit_within, consume_batch, consumer_settings, release_consumer
from consumer.records.deadletter import DeadLetterEvent
from consumer.redis_lock import RedisLock
from consumer.retry_policy import retry_delay
from consumer.router.dirty import Cause, DirtyKey, decode_dirty, dirty_message_key, encode_dirty
from consumer.schedule.runs import RunStore, RunSummary
from consumer.schedule.when import Schedule
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window

__all__ = ["Scheduler", "scheduled_group"]

log = logging.getLogger(__name__)

# How often the loop looks again at most: a run another process holds may have died (its lock
# expires), and the record may have changed.
RECHECK_S = 5.0
# The run lock outlives a silent holder by this much; renewed every third of it.
LOCK_TTL_MS = 60_000
POLL_BATCH = 500
POLL_TIMEOUT_S = 0.2
# A run has read everything written before it started once every partition is past the
# watermark it had then and nothing came for this long (the local broker's watermark trails the
# last record batch, docs/local-stack.md; on Kafka the wait only confirms it).
QUIET_S = 1.0
# Past this long with nothing to read the run ends whatever the watermarks said (a committed
# offset behind the retention, a partition emptied meanwhile).
IDLE_END_S = 10.0
# As the syncer's (syncer/loop.py): retry backoff for a failed window, and how long a stop
# lets a window in flight finish.
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
DRAIN_BOUND_S = 30.0
COMMIT_BOUND_S = 15.0
BROKER_TIMEOUT_S = 10.0
WRITE_BACK_TIMEOUT_S = 30.0
# Missed ticks are counted up to this many (a cron of every minute down for a week is not
# worth iterating).
MISSED_COUNT_BOUND = 1000


def scheduled_group(definition: SyncDefinition, resource: str) -> str:
    """The consumer group whose committed offsets say how far ``resource``'s runs are on the
    scheduled topic. One per resource: resources on different schedules share the topic, and
    one group's offsets could not say "sent" for one and "waiting" for another."""
    return f"{definition.source.kafka.group_id}.scheduled.{resource}"


class _Stopped(Exception):
    """The run ends before it finished (stop, or the lock lost): nothing more is committed."""


@dataclass
class Scheduler:
    definition: SyncDefinition
    # Takes each window through recompute, delivery, audit and dead letters; its stats are
    # this scheduler's own (a run's counts are their difference).
    sink: WindowSink
    redis: Redis
    # Writes held entities back to the scheduled topic (may be the sink's producer).
    producer: Producer
    consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer
    clock: Callable[[], float] = time.time
    runs: RunStore = field(init=False)
    _schedules: dict[str, Schedule] = field(init=False)

    def __post_init__(self) -> None:
        self.runs = RunStore(self.redis, self.definition.redis.key_prefix)
        self._schedules = {
            name: Schedule.of(self.definition.resources[name].delivery)
            for name in self.definition.scheduled_resources()
        }

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self, stop: threading.Event) -> None:
        """Serve every due tick until ``stop``; resources are run one after the other here (other
        processes may run the others meanwhile). A failure is logged and tried again later."""
        while not stop.is_set():
            wake_ms = self.now_ms() + int(RECHECK_S * 1000)
            for name, schedule in self._schedules.items():
                if stop.is_set():
                    return
                try:
                    wake_ms = min(wake_ms, await self.tick(name, schedule, stop))
                except SyncError as exc:
                    log.warning("scheduled run of %s not done, trying again: %s", name, exc)
                except Exception:
                    log.exception("scheduled run of %s failed; trying again", name)
            await _sleep(max(0.0, (wake_ms - self.now_ms()) / 1000), stop)

    async def tick(self, name: str, schedule: Schedule, stop: threading.Event) -> int:
        """Run ``name`` if a tick passed that no finished run served; return when to look again
        (epoch ms). Another process holding the run: looked at again after RECHECK_S."""
        now = self.now_ms()
        due, upcoming = schedule.last_at_or_before(now), schedule.next_after(now)
        record = await self.runs.read(name)
        if record.served_tick_ms is not None and record.served_tick_ms >= due:
            if record.next_tick_ms != upcoming:
                await self.runs.next_tick(name, upcoming)
            return upcoming
        lock_key = f"{self.definition.redis.key_prefix}:scheduled-lock:{name}"
        lock = RedisLock(self.redis, lock_key, LOCK_TTL_MS, "scheduled run lock")
        if not await lock.take():
            log.info("%s: another process runs the tick of %s", name, _iso(due))
            return now + int(RECHECK_S * 1000)
        async with lock.renewed():
            record = await self.runs.read(name)  # it may have been served since we looked
            if record.served_tick_ms is not None and record.served_tick_ms >= due:
                return upcoming
            missed = _missed(schedule, record.served_tick_ms, due)
            if missed:
                log.warning(
                    "%s: %d ticks passed while no run was finished; one run now", name, missed
                )
            await self.runs.started(name, due, now, missed)
            summary = await self.run_once(name, lock, stop)
            if summary is None:
                return upcoming  # stopped or lost: the tick stays unserved
            finished = self.now_ms()
            upcoming = schedule.next_after(finished)
            await self.runs.finished(name, due, finished, summary, upcoming)
            log.info(
                "%s: run of tick %s done in %.1f s: %d keys, %d entities, sent %d, skipped %d, "
                "held %d",
                name,
                _iso(due),
                (finished - now) / 1000,
                summary.keys,
                summary.entities,
                summary.sent,
                summary.skipped,
                summary.held,
            )
            return upcoming

    async def run_once(
        self, name: str, lock: RedisLock, stop: threading.Event
    ) -> RunSummary | None:
        """One run of ``name``: its keys written before now, each entity once per window; None
        if it stopped before the end (what it committed stays committed)."""
        started_ms = self.now_ms()
        group = scheduled_group(self.definition, name)
        settings = consumer_settings(self.definition.source.kafka, group)
        consumer = self.consumer_factory(settings)
        try:
            return await _Run(self, name, consumer, lock, stop, started_ms).read_all()
        except _Stopped:
            return None
        finally:
            await asyncio.to_thread(release_consumer, consumer, True)


@dataclass
class _Run:
    scheduler: Scheduler
    name: str
    consumer: Consumer
    lock: RedisLock
    stop: threading.Event
    started_ms: int
    summary: RunSummary = field(default_factory=RunSummary)
    # Per partition: the offset after the last message read (of any resource), what a commit
    # after the current window may go up to.
    read_to: dict[int, int] = field(default_factory=dict)
    # Partitions still read: a message written after the run started closes its partition.
    reading: set[int] = field(default_factory=set)
    high: dict[int, int] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return self.scheduler.definition.topics.scheduled

    async def read_all(self) -> RunSummary:
        await asyncio.to_thread(self._assign)
        max_keys = self.scheduler.definition.resources[self.name].delivery.max_keys
        prefix = f"{self.name}/".encode()
        window = _new_window()
        committed = dict(self.read_to)
        idle_since = time.monotonic()
        while True:
            self._check()
            messages = await asyncio.to_thread(
                consume_batch, self.consumer, POLL_BATCH, POLL_TIMEOUT_S
            )
            for message in messages:
                key = self._read(message, prefix, window)
                if key is _SKIP:
                    continue
                if isinstance(key, DirtyKey):
                    entity = (key.resource, str(key.id))
                    if len(window) >= max_keys and entity not in window.ids:
                        # Full: this key starts the next window (the poll's keys of entities
                        # already in it still coalesce into it).
                        await self._finish(window)
                        committed, window = dict(self.read_to), _new_window()
                    window.add(key, message.offset() or 0, 0.0)
                self.read_to[message.partition() or 0] = (message.offset() or 0) + 1
            if messages:
                idle_since = time.monotonic()
                continue
            idle = time.monotonic() - idle_since
            caught_up = all(self.read_to[p] >= self.high[p] for p in self.reading)
            if (caught_up and idle >= QUIET_S) or idle >= IDLE_END_S:
                break
        if len(window) or self.read_to != committed:
            await self._finish(window)
        return self.summary

    def _assign(self) -> None:
        """Every partition of the scheduled topic, each from the group's committed offset."""
        try:
            metadata = self.consumer.list_topics(self.topic, timeout=BROKER_TIMEOUT_S)
            found = metadata.topics.get(self.topic)
            if found is None or found.error is not None:
                raise Retryable(f"topic {self.topic} not found")
            wanted = [TopicPartition(self.topic, p) for p in sorted(found.partitions)]
            committed = self.consumer.committed(wanted, timeout=BROKER_TIMEOUT_S)
            starts = []
            for tp in committed:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=BROKER_TIMEOUT_S, cached=False
                )
                start = tp.offset if tp.offset >= 0 else low
                self.read_to[tp.partition] = start
                self.high[tp.partition] = high
                starts.append(
                    TopicPartition(
                        self.topic, tp.partition, start if tp.offset >= 0 else OFFSET_BEGINNING
                    )
                )
            self.consumer.assign(starts)
        except KafkaException as exc:
            raise Retryable(f"reading {self.topic}: {exc.args[0]}") from exc
        self.reading = set(self.read_to)

    def _read(self, message: Message, prefix: bytes, window: Window) -> DirtyKey | object | None:
        """``_SKIP``: not this run's to take or commit (an error, a partition closed, a key
        written after the run started). A DirtyKey of this resource, or None: read and
        committed with the window, but nothing to send (another resource's key, or one
        ``window`` covers with its dead letter, made durable when the window is processed)."""
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("scheduled topic read error: %s", error)
            return _SKIP
        partition = message.partition() or 0
        if partition not in self.reading:
            return _SKIP  # fetched before its partition was closed: the next run's
        kind, written_ms = message.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE and written_ms > self.started_ms:
            # Written after the run started: it and what follows wait for the next run.
            self.reading.discard(partition)
            self.consumer.pause([TopicPartition(self.topic, partition)])
            return _SKIP
        if not (message.key() or b"").startswith(prefix):
            return None  # another scheduled resource's: its own runs read it
        self.summary = _plus(self.summary, keys=1)
        try:
            key = decode_dirty(message.value() or b"")
            if key.resource != self.name:
                raise ValueError(f"key names {key.resource!r}, the message key {self.name!r}")
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            letter = DeadLetterEvent.from_message(message, exc, "syncer")
            window.cover(message.offset() or 0, letter)
            self.scheduler.sink.stats.dead_lettered += 1
            return None
        return key

    async def _finish(self, window: Window) -> None:
        """Process the window until it succeeds (or the run stops), write what Reach held back
        to the topic, then commit what was read."""
        stats = self.scheduler.sink.stats
        before = (stats.sent, stats.skipped, stats.deleted, stats.dead_lettered)
        attempt = 0
        while True:
            self._check()
            try:
                # An empty window too: it makes the dead letters of its keys durable.
                await _drained(self.scheduler.sink.process(window), self.stop)
                if window.held:
                    await asyncio.to_thread(self._write_back, window)
                break
            except SyncError as exc:
                attempt += 1
                delay = (
                    RETRY_CAP_S
                    if isinstance(exc, ConfigurationError)
                    else retry_delay(
                        attempt,
                        base_s=RETRY_BASE_S,
                        cap_s=RETRY_CAP_S,
                        retry_after_s=exc.retry_after_s if isinstance(exc, Retryable) else None,
                    )
                )
                log.warning(
                    "%s: window failed (%s); retry %d in %.1f s", self.name, exc, attempt, delay
                )
                await _sleep(delay, self.stop)
        self._check()
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(self.read_to.items())]
        try:
            done = await asyncio.to_thread(commit_within, self.consumer, offsets, COMMIT_BOUND_S)
        except KafkaException as exc:
            raise Retryable(f"commit on {self.topic}: {exc.args[0]}") from exc
        if done is None:
            raise Retryable(f"commit on {self.topic} unanswered")
        self.summary = _plus(
            self.summary,
            entities=len(window),
            sent=stats.sent - before[0],
            skipped=stats.skipped - before[1],
            deleted=stats.deleted - before[2],
            dead_lettered=stats.dead_lettered - before[3],
            held=len(window.held),
        )

    def _write_back(self, window: Window) -> None:
        """Entities Reach refused for now go to the next run: a dirty key each, acknowledged
        before the commit passes the keys that carried them."""
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        now_ms = self.scheduler.now_ms()
        for entity in window.held:
            resource, _ = entity
            causes = window.causes.get(entity) or [Cause(kind="unknown")]
            key = DirtyKey(
                resource, window.ids[entity], causes[0], now_ms, later_causes=tuple(causes[1:])
            )
            message_key = dirty_message_key(resource, window.ids[entity])
            while True:
                try:
                    self.scheduler.producer.produce(
                        self.topic, encode_dirty(key), message_key, on_delivery=on_delivery
                    )
                    break
                except BufferError:
                    self.scheduler.producer.poll(0.1)
        left = self.scheduler.producer.flush(WRITE_BACK_TIMEOUT_S)
        if left or failures:
            raise Retryable(
                f"held entities not written back to {self.topic}: {failures[:1] or left}"
            )

    def _check(self) -> None:
        if self.stop.is_set():
            raise _Stopped("stopped")
        if self.lock.lost:
            raise _Stopped("the run lock was lost")


def _iso(ms: int) -> str:
    """A tick as people read it in a log line (UTC)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# What _Run._read answers for a message the run neither takes nor commits.
_SKIP = object()


def _new_window() -> Window:
    return Window(opened_at=time.monotonic(), due_after_s=0.0)


def _plus(summary: RunSummary, **more: int) -> RunSummary:
    values = {
        "keys": summary.keys,
        "entities": summary.entities,
        "sent": summary.sent,
        "skipped": summary.skipped,
        "deleted": summary.deleted,
        "dead_lettered": summary.dead_lettered,
        "held": summary.held,
    }
    for name, value in more.items():
        values[name] += value
    return RunSummary(**values)


def _missed(schedule: Schedule, served_ms: int | None, due_ms: int) -> int:
    """Ticks strictly between the last served one and ``due_ms`` (bounded)."""
    if served_ms is None:
        return 0
    count, tick = 0, schedule.next_after(served_ms)
    while tick < due_ms and count < MISSED_COUNT_BOUND:
        count += 1
        tick = schedule.next_after(tick)
    return count


async def _sleep(seconds: float, stop: threading.Event) -> None:
    """Sleep, but wake at once on ``stop``."""
    if seconds > 0:
        await asyncio.to_thread(stop.wait, seconds)


async def _drained(work: Awaitable[None], stop: threading.Event) -> None:
    """Await ``work``; once ``stop`` is set it gets DRAIN_BOUND_S more, then is cancelled (the
    run stops without committing it)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done() and not stop.is_set():
            await asyncio.wait([task], timeout=0.2)
        if not task.done():
            await asyncio.wait([task], timeout=DRAIN_BOUND_S)
        if not task.done():
            raise _Stopped("a window did not finish within the drain bound")
        task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
