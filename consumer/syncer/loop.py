"""Stage 2, the syncer's loop: poll the dirty topic, add keys to windows, run windows, commit.

Each step is a method, in the order the loop calls them: add what was polled to its partition's
open window, bring back held entities whose tenant Reach accepts again, start due windows (one in
flight per partition, in a task group; the window sink does the work), pause what is full, and
observe progress. A window's offsets are committed only after every entity in it reached a
durable outcome, never past an entity still held. ``consume`` runs in a worker thread; the
rebalance callbacks hand revoked partitions to the loop and wait, bounded by a share of
max.poll.interval.ms. The long story: docs/design.md, "The syncer".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.config import REACH_MAX_BATCH, SyncDefinition
from consumer.errors import ConfigurationError, Retryable, SyncError
from consumer.kafka import (
    commit_in_rebalance,
    commit_reporter,
    commit_within,
    consume_batch,
    consumer_settings,
    describe_partitions,
    release_consumer,
)
from consumer.observe.metrics import NO_INSTRUMENTS, Instruments
from consumer.observe.progress import ProgressTracker, high_watermark
from consumer.observe.spans import span_failed, window_span
from consumer.reach.breaker import Circuit
from consumer.records.deadletter import DeadLetterEvent
from consumer.retry_policy import retry_delay
from consumer.router.dirty import decode_dirty
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.health import Health, health_of
from consumer.syncer.held import HeldEntity
from consumer.syncer.in_flight import InFlight
from consumer.syncer.partitions import BACKLOG_FACTOR, Partition
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Entity, Window

__all__ = ["Syncer", "revoke_bound_s"]

log = logging.getLogger(__name__)

POLL_BATCH = 1000
POLL_TIMEOUT_S = 0.1
# Retry backoff for a failed window: exponential with full jitter, capped; a configuration error
# that is no tenant's alone (an unknown schema, a broken query) waits the cap, since only a
# person can fix it.
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
# How long a revoke may wait for in-flight windows before giving the partitions up uncommitted:
# this share of max.poll.interval.ms (librdkafka's default 300 s: 60 s), so that the wait and
# the next poll stay well inside it (the final commit does not wait). An operator who
# lowers max.poll.interval.ms in client_settings (or consumer_settings) lowers this bound with it.
REVOKE_SHARE = 0.2
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000
# How long shutdown waits for in-flight windows, then for the producer to flush.
DRAIN_BOUND_S = 30.0
PRODUCER_FLUSH_S = 30.0
# The synchronous final commit of a shutdown gives up after this (kafka.commit_within).
FINAL_COMMIT_BOUND_S = 15.0
# Source-commit → accepted latencies kept for percentiles (the demo and the benchmark).
LATENCY_SAMPLES = 20_000
# A window holding only dead-lettered messages closes at once; with keys, by its resources'.
_LONGEST_WINDOW_S = 600.0


def revoke_bound_s(client_settings: Mapping[str, object]) -> float:
    """How long a revoke waits for in-flight windows (``REVOKE_SHARE``): from the
    max.poll.interval.ms the consumer runs with."""
    raw = client_settings.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS)
    return REVOKE_SHARE * int(str(raw)) / 1000


@dataclass
class Syncer:
    definition: SyncDefinition
    # Takes each window through recompute, delivery, audit and dead letters (window_sink.py).
    sink: WindowSink
    # Which tenants Reach refuses for now (shared with the sink, which sends through it).
    blocks: TenantBlocks
    stats: SyncerStats = field(default_factory=SyncerStats)
    # The client's circuit breaker, for readiness (None: the client has none).
    circuit: Circuit | None = None
    # Told each partition's done offset and high watermark as the loop runs, for readiness.
    progress: ProgressTracker | None = None
    # What the loop records metrics into (metrics.py; off by default).
    instruments: Instruments = NO_INSTRUMENTS
    # Makes the dirty topic's consumer from librdkafka settings (a test's stand-in, or Kafka's).
    consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer
    _partitions: dict[int, Partition] = field(default_factory=dict)
    _consumer: Consumer = field(init=False)
    # Calls into the consumer the loop wants made (pause, resume, progress reads): made on the
    # poll thread before the next poll, as confluent-kafka lets one thread in at a time.
    _chores: list[Callable[[], object]] = field(default_factory=list)
    # Offsets finished windows may commit: handed to the poll thread with the next poll.
    _to_commit: dict[int, tuple[Partition, int]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    # The task group the windows run in, while run() polls.
    _windows: asyncio.TaskGroup | None = None
    _in_flight: InFlight = field(init=False)
    # Held entities go back into windows this many at a time: one window of the smallest.
    _release_chunk: int = field(init=False)
    # How long a revoke waits for in-flight windows (from max.poll.interval.ms).
    revoke_bound_s: float = field(init=False)

    def __post_init__(self) -> None:
        kafka = self.definition.source.kafka
        self.revoke_bound_s = revoke_bound_s({**kafka.client_settings, **kafka.consumer_settings})
        self._consumer = self.consumer_factory(
            consumer_settings(
                kafka,
                f"{kafka.group_id}.syncer",
                on_commit=commit_reporter("syncer", self._commit_failed),
            )
        )
        self._in_flight = InFlight(self.definition.in_flight)
        self._release_chunk = min(r.delivery.max_keys for r in self.definition.resources.values())

    def health(self) -> Health:
        """For readiness (/readyz), from any thread: it reads copies of what the loop and the
        rebalance callbacks change."""
        return health_of(list(self._partitions.items()), self.blocks, self.circuit)

    # --- the loop --------------------------------------------------------------------------------

    async def run(self, stop: threading.Event) -> SyncerStats:
        self._loop = asyncio.get_running_loop()
        kafka = self.definition.source.kafka
        consumer = self._consumer
        consumer.subscribe(
            [self.definition.topics.dirty],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        poller = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncer-poll")
        try:
            await self._poll_until(stop, poller)
            await self.sink.flush()
        finally:
            # On the poll thread, like every call that can run rebalance callbacks: a close()
            # revokes, and the revoke handler must not wait on a loop that is blocked calling it.
            await self._loop.run_in_executor(
                poller, self._release, consumer, kafka.leave_group_on_close
            )
            poller.shutdown(wait=True)
            self.sink.close()
        return self.stats

    async def _poll_until(
        self, stop: threading.Event, poller: concurrent.futures.ThreadPoolExecutor
    ) -> None:
        """The loop. Its windows run in a task group: none outlives it; those still running
        after the drain bound are cancelled, uncommitted, for the next owner to read again."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as windows:
                self._windows = windows
                while not stop.is_set():
                    chores, self._chores = self._chores, []
                    messages = await loop.run_in_executor(
                        poller,
                        self._commit_then_poll,
                        chores,
                        self.take_commits(),
                        self._poll_room(),
                        self._poll_timeout_s(),
                    )
                    self._add(messages)
                    self._bring_back_held()
                    self._start_due_windows()
                    self._apply_backpressure()
                    self._count_held()
                    self._observe_progress()
                parts = list(self._partitions.values())
                await self._drain(parts, DRAIN_BOUND_S)
                for part in parts:
                    if part.running is not None:
                        part.running.cancel()
        except BaseExceptionGroup as group:
            # A window never raises (run_window), so this is the loop's own error: as it was.
            raise group.exceptions[0] from None
        finally:
            self._windows = None

    def _release(self, consumer: Consumer, leave_group: bool) -> None:
        self._commit_done(list(self._partitions.values()))
        release_consumer(consumer, leave_group=leave_group)

    def _add(self, messages: list[Message]) -> None:
        now = time.monotonic()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("dirty topic read error: %s", error)
                continue
            part = self._partitions.get(message.partition() or 0)
            if part is None or part.revoked:
                continue
            if part.open is None:
                part.open = Window(opened_at=now, due_after_s=_LONGEST_WINDOW_S)
            offset = message.offset() or 0
            part.read(offset)
            try:
                key = decode_dirty(message.value() or b"")
                resource = self.definition.resources[key.resource]
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                part.open.cover(offset, DeadLetterEvent.from_message(message, exc, "syncer"))
                self.stats.dead_lettered += 1
                continue
            part.open.add(key, offset, resource.delivery.window_ms / 1000)
            self.stats.dirty_keys += 1
            self.stats.triggers += key.triggers

    def _max_keys(self, window: Window) -> int:
        return min(
            (self.definition.resources[r].delivery.max_keys for r in window.resources),
            default=REACH_MAX_BATCH,
        )

    def _start_due_windows(self) -> None:
        now = time.monotonic()
        for part in self._partitions.values():
            if part.running is not None or part.revoked:
                continue
            window = part.failed
            if window is not None:
                if now < part.retry_at:
                    continue
                # Merge what arrived meanwhile, but only within the backlog bound: a window that
                # keeps failing (Reach down) must not grow with every retry.
                bound = BACKLOG_FACTOR * self._max_keys(window)
                if part.open is not None and len(window) + len(part.open) <= bound:
                    window.absorb(part.open)
                    part.open = None
            elif part.open is not None and part.open.due(now, self._max_keys(part.open)):
                window, part.open = part.open, None
            if window is None:
                continue
            part.failed = None
            part.running_window = window
            part.running = self._window_group().create_task(self.run_window(part, window))

    def _window_group(self) -> asyncio.TaskGroup:
        if self._windows is None:
            raise RuntimeError("windows start only while run() polls")
        return self._windows

    def _bring_back_held(self) -> None:
        """Held entities whose tenant Reach accepts again go back into their partition's open
        window, a window's worth at a time; and each blocked tenant whose probe is due gets one
        entity back, unless one of its entities is in a window already."""
        parts = [p for p in self._partitions.values() if not p.revoked and len(p.held)]
        for part in parts:
            room = self._release_chunk - (len(part.open) if part.open is not None else 0)
            if room > 0:
                self._readd(part, part.held.release(self.blocks.is_blocked, room))
        due = set(self.blocks.due())
        if due:
            due -= set().union(*(p.held.in_window() for p in parts))
        for tenant in due:
            for part in parts:
                probe = part.held.take_probe(tenant)
                if probe is not None:
                    self._readd(part, [probe])
                    break

    def _readd(self, part: Partition, entities: list[tuple[Entity, HeldEntity]]) -> None:
        if not entities:
            return
        if part.open is None:
            part.open = Window(opened_at=time.monotonic(), due_after_s=_LONGEST_WINDOW_S)
        for entity, held in entities:
            window_s = self.definition.resources[entity[0]].delivery.window_ms / 1000
            part.open.readd(entity, held.entity_id, held.causes, held.offset, window_s)

    def _apply_backpressure(self) -> None:
        """Pause a partition whose backlog window is full while another is in flight, or that
        holds too much for a refused tenant; pause every partition while the process is at its
        in-flight bound, until it is back below the low-water mark."""
        saturated = self._count_in_flight()
        for part in self._partitions.values():
            max_keys = self._max_keys(part.open) if part.open is not None else 0
            stop = part.should_pause(max_keys) or saturated
            if stop == part.paused:
                continue  # as it is: the common case, once per partition and poll
            tp = [TopicPartition(part.topic, part.partition)]
            # On the poll thread, before the next poll (_commit_then_poll).
            self._chores.append(
                partial(self._consumer.pause if stop else self._consumer.resume, tp)
            )
            part.paused = stop

    def _poll_room(self) -> int:
        """How many messages the next poll may take: what is left under the in-flight bound (a
        message adds at most one dirty key), so the bound holds to within a message; at least
        one, since a poll is also what keeps the consumer in its group."""
        return max(
            1, min(POLL_BATCH, self.definition.in_flight.max_records - self._in_flight.records)
        )

    def _count_in_flight(self) -> bool:
        """Every dirty key read and not done yet, and the memory the windows' keys take (held
        entities are counted, not sized); True while the process is at its bound."""
        held = [p.in_flight() for p in self._partitions.values()]
        records, size = sum(r for r, _ in held), sum(b for _, b in held)
        flight = self._in_flight
        saturated = flight.update(records, size)
        if flight.saturations > self.stats.in_flight_pauses:
            log.warning(
                "in-flight bound reached (%d dirty keys, %d bytes): every partition paused",
                records,
                size,
            )
        # Reported as InFlight counts them (metrics read the stats).
        self.stats.in_flight_pauses, self.stats.in_flight_peak = (
            flight.saturations,
            flight.peak_records,
        )
        self.stats.in_flight, self.stats.in_flight_bytes = records, size
        return saturated

    def _observe_progress(self) -> None:
        """For readiness, at most once a second: where each partition's finished windows end
        (held entities do not hold it back) and its high watermark, a local read of librdkafka's
        state made on the poll thread."""
        now = time.monotonic()
        if self.progress is None or not self.progress.due(now):
            return
        consumer, progress = self._consumer, self.progress
        parts = [p for p in list(self._partitions.values()) if not p.revoked]

        def observe() -> None:  # on the poll thread, before the next poll
            progress.observe(
                [p.progress(high_watermark(consumer, p.topic, p.partition)) for p in parts], now
            )

        self._chores.append(observe)

    def _count_held(self) -> None:
        self.stats.blocked_tenants = len(self.blocks.snapshot())
        self.stats.held = sum(len(p.held) for p in self._partitions.values())

    # --- one window ------------------------------------------------------------------------------

    async def run_window(self, part: Partition, window: Window) -> None:
        """One attempt at a partition's window: process it (the sink), then commit; or schedule a
        retry. Never raises into the loop. All of it in the window's span (spans.py), so that its
        log lines carry the window's trace id."""
        attempt = part.attempts + 1
        with window_span(self.definition, part.topic, part.partition, window, attempt) as span:
            try:
                await self.sink.process(window)
            except SyncError as exc:
                span_failed(span, exc)
                self._schedule_retry(part, window, exc)
            except Exception as exc:
                span_failed(span, exc)
                log.exception("unexpected error in a window; it will be retried")
                self._schedule_retry(part, window, Retryable(f"unexpected: {type(exc).__name__}"))
            else:
                self._commit(part, window)
                self._record_latency(window)
                part.attempts = 0
                part.stalled = None
            finally:
                part.running = None

    def _record_latency(self, window: Window) -> None:
        now_ms = int(time.time() * 1000)
        latencies, own = window.latencies_ms(now_ms)
        self.stats.latencies_ms.extend(latencies)
        self.stats.own_latencies_ms.extend(own)
        if latencies and window.first_enqueued_ms:
            self.stats.window_latencies_ms.append(max(0, now_ms - window.first_enqueued_ms))
        self.instruments.window_finished(window, latencies)  # once per window (metrics.py: cost)

    def _schedule_retry(self, part: Partition, window: Window, error: SyncError) -> None:
        part.attempts += 1
        self.stats.retries += 1
        part.stalled = error if isinstance(error, ConfigurationError) else None
        if isinstance(error, ConfigurationError):
            delay = RETRY_CAP_S
            log.error("configuration error, nothing is sent until it is fixed: %s", error)
        else:
            retry_after = error.retry_after_s if isinstance(error, Retryable) else None
            delay = retry_delay(
                part.attempts, base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S, retry_after_s=retry_after
            )
            log.warning(
                "window of partition %d failed (%s); retry %d in %.1f s",
                part.partition,
                error,
                part.attempts,
                delay,
            )
        part.failed = window
        part.retry_at = time.monotonic() + delay

    def _commit(self, part: Partition, window: Window) -> None:
        """Commit after a finished window, without blocking the loop (on the poll thread):

        1. the window's end is done (a window of held entities only ends nowhere new);
        2. what it held is kept, with its offset, and what it settled is let go;
        3. commit up to the done end, but not past the lowest offset still held.

        A synchronous commit here could not finish while a rebalance callback waits on this
        loop; the revoke handler makes the final commit from its callback, shutdown from the
        poll thread (_commit_done)."""
        if window.end_offset >= 0:
            part.done_offset = max(part.done_offset or 0, window.end_offset + 1)
        part.held.settle(window)
        offset = part.commit_offset()
        if offset is None:
            return
        self._to_commit[id(part)] = (part, offset)  # the latest offset of each partition
        self.stats.commits += 1

    def take_commits(self) -> list[tuple[Partition, int]]:
        """On the loop: what finished windows may commit since the last time, for the poll
        thread to commit (commit_pending)."""
        offsets, self._to_commit = self._to_commit, {}
        return list(offsets.values())

    def _commit_then_poll(
        self,
        chores: list[Callable[[], object]],
        offsets: list[tuple[Partition, int]],
        room: int,
        timeout_s: float,
    ) -> list[Message]:
        """On the poll thread: what the loop asked of the consumer (pause, resume, progress),
        the commits finished windows handed over, then the poll."""
        for chore in chores:
            try:
                chore()
            except KafkaException as exc:  # e.g. a partition revoked meanwhile
                log.debug("a consumer call from the loop failed: %s", exc)
        self.commit_pending(offsets)
        return consume_batch(self._consumer, room, timeout_s)

    def _poll_timeout_s(self) -> float:
        """How long the next poll may wait: POLL_TIMEOUT_S, but no longer than until the first
        open window is due or the first failed one may be retried, so that a window closes on
        time when no key arrives to end the poll."""
        now = time.monotonic()
        due = [POLL_TIMEOUT_S]
        for part in self._partitions.values():
            if part.running is not None or part.revoked:
                continue
            if part.failed is not None:
                due.append(part.retry_at - now)
            elif part.open is not None and len(part.open):
                due.append(part.open.opened_at + part.open.due_after_s - now)
        return max(0.0, min(due))

    def commit_pending(self, offsets: list[tuple[Partition, int]]) -> None:
        """Commit ``offsets`` (asynchronously), but none of a revoked partition. On the poll
        thread: confluent-kafka lets one thread into a consumer at a time, so a commit from the
        loop waited for the running poll (up to POLL_TIMEOUT_S), and the loop with it. Revokes
        run on this thread too, so a partition's final commit is never followed by an older
        one from here (a partition assigned again is a new Partition)."""
        owned = [
            TopicPartition(part.topic, part.partition, offset)
            for part, offset in offsets
            if not part.revoked
        ]
        if not owned:
            return
        try:
            self._consumer.commit(offsets=owned, asynchronous=True)
        except KafkaException as exc:
            self._commit_failed()
            log.warning("commit of partitions %s failed: %s", [tp.partition for tp in owned], exc)

    def _commit_failed(self) -> None:
        self.stats.commit_failures += 1

    @staticmethod
    def _final_offsets(parts: list[Partition]) -> list[TopicPartition]:
        done = [(p, p.commit_offset()) for p in parts]
        return [TopicPartition(p.topic, p.partition, o) for p, o in done if o is not None]

    def _commit_done(self, parts: list[Partition]) -> None:
        """Synchronously commit what is done, bounded; only from the poll thread at shutdown (a
        revoke commits from inside its callback: kafka.commit_in_rebalance)."""
        offsets = self._final_offsets(parts)
        if not offsets:
            return
        try:
            if commit_within(self._consumer, offsets, FINAL_COMMIT_BOUND_S) is None:
                self._commit_failed()
                log.error("final commit of %d partitions unanswered", len(offsets))
        except KafkaException as exc:
            self._commit_failed()
            log.warning("final commit of %d partitions failed: %s", len(offsets), exc)

    # --- rebalance and shutdown ------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions[tp.partition] = Partition(tp.topic, tp.partition)
        if partitions:
            log.info(
                "syncer assigned %d partitions: %s; %d in all",
                len(partitions),
                describe_partitions((tp.topic, tp.partition) for tp in partitions),
                len(self._partitions),
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Runs in the poll thread: let the loop finish these partitions' windows (bounded),
        commit them, and cancel any window that outlived the bound, so that no window keeps
        sending for a partition another consumer now owns."""
        parts = [
            self._partitions[tp.partition] for tp in partitions if tp.partition in self._partitions
        ]
        for part in parts:
            part.revoked = True
        if self._loop is not None and parts and not self._loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(
                self._drain(parts, self.revoke_bound_s), self._loop
            )
            try:
                future.result(timeout=self.revoke_bound_s + 5)
            except concurrent.futures.TimeoutError:
                log.error(
                    "revoked partitions did not finish within %.0f s; their windows are cancelled",
                    self.revoke_bound_s,
                )
            for part in parts:
                if part.running is not None:
                    self._loop.call_soon_threadsafe(part.running.cancel)
        try:
            commit_in_rebalance(self._consumer, self._final_offsets(parts))
        except KafkaException as exc:
            self._commit_failed()
            log.warning("final commit of revoked partitions failed: %s", exc)
        for part in parts:
            self._partitions.pop(part.partition, None)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost, not revoked: someone else may own them already; never commit them."""
        for tp in partitions:
            part = self._partitions.pop(tp.partition, None)
            if part is not None:
                part.revoked = True
                if part.running is not None and self._loop is not None:
                    self._loop.call_soon_threadsafe(part.running.cancel)

    async def _drain(self, parts: list[Partition], bound_s: float) -> None:
        """Finish the windows in flight (their commits happen as they finish); drop the rest,
        uncommitted, for the next owner to read again."""
        running = [p.running for p in parts if p.running is not None]
        if running:
            await asyncio.wait(running, timeout=bound_s)
        for part in parts:
            part.open = None
            part.failed = None
