"""Stage 2, the syncer: dirty keys → windows → recompute → project → dedup → Reach → commit.

The main loop reads as its steps: poll the dirty topic, add keys to their partition's open
window, bring back held entities whose tenant Reach accepts again (and one per due probe),
start the windows that are due (at most one in flight per partition), commit the ones that
finished, and pause partitions whose backlog or held entities are full. A window's offsets are
committed only after every entity in it reached a durable outcome (sent, skipped, deleted or
dead-lettered), and never past an entity still held (held.py: Reach refuses its tenant for now).
What Reach accepted or deleted is audited (audit.py) as delivery reports it, before the last-sent
store remembers it: the audit topic has acknowledged it before a retry could skip it as
unchanged, and before the window's offsets are committed.

confluent-kafka is synchronous: ``consume`` runs in a worker thread so the event loop keeps
sending while it waits, and the rebalance callbacks (which run inside ``consume``) hand the
revoked partitions to the loop and wait, bounded, for their windows to finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.config import REACH_MAX_BATCH, SyncDefinition
from consumer.errors import ConfigurationError, Retryable, SyncError
from consumer.kafka import commit_within, consume_batch, consumer_settings, release_consumer
from consumer.observe.metrics import instruments as metrics
from consumer.observe.progress import PartitionProgress, ProgressTracker, high_watermark
from consumer.observe.spans import recompute_span, span_failed, window_span
from consumer.reach.breaker import Circuit
from consumer.reach.client import ReachClient
from consumer.records.audit import FLUSH_TIMEOUT_S as AUDIT_FLUSH_S
from consumer.records.audit import Accepted, AuditWriter, Deleted
from consumer.records.deadletter import DeadLetterEvent, dead_letter_record, produce_dead_letter
from consumer.retry_policy import retry_delay
from consumer.router.dirty import Cause, EntityId, decode_dirty
from consumer.sink.dedup import LastSentStore
from consumer.sink.delivery import DeadLetter, DeliveryResult, Removed, Sent, deliver_resource
from consumer.sink.follow import Outstanding
from consumer.sink.recompute import SourceDatabase
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.held import HELD_BOUND, HeldEntities, HeldEntity
from consumer.syncer.in_flight import InFlight
from consumer.syncer.windows import Entity, Window

__all__ = ["BlockedTenant", "Health", "Syncer", "SyncerStats"]

log = logging.getLogger(__name__)

POLL_BATCH = 1000
POLL_TIMEOUT_S = 0.1
# Retry backoff for a failed window: exponential with full jitter, capped; a configuration error
# that is no tenant's alone (an unknown schema, a broken query) waits the cap, since only a
# person can fix it.
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0
# A partition whose open window holds this many times its resources' max_keys while another
# window is in flight is paused: memory stays bounded under any backlog.
BACKLOG_FACTOR = 4
# How long a revoke may wait for in-flight windows before giving the partitions up uncommitted;
# well under librdkafka's max.poll.interval.ms (300 s).
REVOKE_BOUND_S = 60.0
# How long shutdown waits for in-flight windows, then for the producer to flush.
DRAIN_BOUND_S = 30.0
PRODUCER_FLUSH_S = 30.0
# The synchronous commit of a revoke or a shutdown gives up after this (kafka.commit_within).
FINAL_COMMIT_BOUND_S = 15.0
# Source-commit → accepted latencies kept for percentiles (the demo and the benchmark).
LATENCY_SAMPLES = 20_000
# A window holding only dead-lettered messages closes at once; with keys, by its resources'.
_LONGEST_WINDOW_S = 600.0


@dataclass
class SyncerStats:
    """What the syncer did; ``latencies_ms`` holds the most recent source-commit → accepted
    times (the source's commit timestamp to the window's completion), bounded."""

    dirty_keys: int = 0
    # Triggers behind those keys (the router merges an entity's triggers within a batch).
    triggers: int = 0
    windows: int = 0
    entities: int = 0
    recomputes: int = 0
    sent: int = 0
    skipped: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    # Audit records the broker acknowledged (accepted, parked and deleted; a retried window's
    # re-sends are audited again).
    audited: int = 0
    retries: int = 0
    commits: int = 0
    # Now, not a count of events: tenants Reach refuses, and the entities held for them.
    blocked_tenants: int = 0
    held: int = 0
    # The process-wide in-flight bound (in_flight.py): how often it paused every partition, and
    # the most dirty keys held at once.
    in_flight_pauses: int = 0
    in_flight_peak: int = 0
    # Now: the dirty keys in flight and their bytes, as last counted (metrics read them).
    in_flight: int = 0
    in_flight_bytes: int = 0
    latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(self, result: DeliveryResult) -> None:
        self.sent += result.sent
        self.skipped += result.skipped
        self.deleted += result.deleted
        self.dead_lettered += len(result.dead)


@dataclass
class _Partition:
    topic: str
    partition: int
    open: Window | None = None
    running: asyncio.Task[None] | None = None
    # The window ``running`` processes (for the in-flight count; stale once it has finished).
    running_window: Window | None = None
    failed: Window | None = None
    retry_at: float = 0.0
    attempts: int = 0
    paused: bool = False
    revoked: bool = False
    # The next offset of this partition whose windows are all done; a commit commits it unless
    # an entity held (below) was carried by an earlier offset.
    done_offset: int | None = None
    held: HeldEntities = field(default_factory=HeldEntities)
    # The configuration error failing this partition's window, for readiness.
    stalled: ConfigurationError | None = None
    # The first offset read since the partition was assigned: where its windows began, for
    # readiness's lag until the first of them finished (done_offset).
    first_offset: int | None = None

    def commit_offset(self) -> int | None:
        return self.held.commit_offset(self.done_offset)


@dataclass(frozen=True, slots=True)
class _AuditFlush:
    """One flush of the audit writer: it covers the first ``covers`` audit writes."""

    covers: int
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class BlockedTenant:
    since: float  # epoch seconds
    error: str
    probes: int
    held: int  # entities held for it in this process


@dataclass(frozen=True, slots=True)
class Health:
    """What the syncer knows about Reach, for readiness (health.py decides from it): the
    circuit (anything but "closed" means Reach is failing), the tenants Reach refuses, and the
    partitions whose window a configuration error of every tenant fails. The consumer stays in
    its group whatever this says."""

    circuit: str
    blocked: dict[str, BlockedTenant]
    stalled: dict[int, str]


@dataclass
class Syncer:
    definition: SyncDefinition
    client: ReachClient
    db: SourceDatabase
    last_sent: LastSentStore
    producer: Producer
    # Writes the audit topic; the syncer waits until it is acknowledged (see _audit).
    audit: AuditWriter
    stats: SyncerStats = field(default_factory=SyncerStats)
    # The client's circuit breaker, for readiness (None: the client has none).
    circuit: Circuit | None = None
    # Told each partition's done offset and high watermark as the loop runs, for readiness.
    progress: ProgressTracker | None = None
    _partitions: dict[int, _Partition] = field(default_factory=dict)
    _consumer: Consumer | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _dead_letter_failures: list[str] = field(default_factory=list)
    _blocks: TenantBlocks = field(init=False)
    # Reach batches an attempt could not follow to their end: followed first by the next send
    # of their resource to their tenant (follow.py).
    _outstanding: Outstanding = field(init=False, default_factory=Outstanding)
    _in_flight: InFlight = field(init=False)
    # Held entities go back into windows this many at a time: one window of the smallest.
    _release_chunk: int = field(init=False)
    # Audit flushes wait on the broker in this one thread, one at a time: never in the loop, and
    # never filling the default executor while the broker is slow. Writes are counted so that a
    # flush knows whose records it covers (_flush_audit).
    _audit_flusher: concurrent.futures.ThreadPoolExecutor = field(init=False)
    _audit_writes: int = field(init=False, default=0)
    _audit_flush: _AuditFlush | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._blocks = TenantBlocks(self.definition.destination.tenant_probe)
        self._in_flight = InFlight(self.definition.in_flight)
        self._release_chunk = min(r.delivery.max_keys for r in self.definition.resources.values())
        self._audit_flusher = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="audit-flush"
        )

    def health(self) -> Health:
        """For readiness (/readyz), from any thread: it reads copies of what the loop and the
        rebalance callbacks change."""
        parts = list(self._partitions.items())
        held = sum((p.held.by_tenant() for _, p in parts), Counter[str]())
        blocked = {
            tenant: BlockedTenant(block.since, str(block.error), block.probes, held[tenant])
            for tenant, block in self._blocks.snapshot().items()
        }
        stalled = {n: str(p.stalled) for n, p in parts if p.stalled}
        circuit = "closed" if self.circuit is None else self.circuit.state.value
        return Health(circuit, blocked, stalled)

    # --- the loop --------------------------------------------------------------------------------

    async def run(self, stop: threading.Event) -> SyncerStats:
        self._loop = asyncio.get_running_loop()
        kafka = self.definition.source.kafka
        consumer = Consumer(consumer_settings(kafka, f"{kafka.group_id}.syncer"))
        self._consumer = consumer
        consumer.subscribe(
            [self.definition.topics.dirty],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        poller = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncer-poll")
        try:
            while not stop.is_set():
                messages = await self._loop.run_in_executor(
                    poller, consume_batch, consumer, self._poll_room(), POLL_TIMEOUT_S
                )
                self._add(messages)
                self._bring_back_held()
                self._start_due_windows()
                self._apply_backpressure()
                self._count_held()
                self._observe_progress()
            await self._drain(list(self._partitions.values()), DRAIN_BOUND_S)
            await self._loop.run_in_executor(None, self.producer.flush, PRODUCER_FLUSH_S)
        finally:
            # On the poll thread, like every call that can run rebalance callbacks: a close()
            # revokes, and the revoke handler must not wait on a loop that is blocked calling it.
            await self._loop.run_in_executor(
                poller, self._release, consumer, kafka.leave_group_on_close
            )
            poller.shutdown(wait=True)
            self._audit_flusher.shutdown(wait=True)
        return self.stats

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
            if part.first_offset is None:
                part.first_offset = offset
            try:
                key = decode_dirty(message.value() or b"")
                resource = self.definition.resources[key.resource]
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
                self._dead_letter_event(message, exc)
                part.open.cover(offset)
                continue
            part.open.add(key, offset, resource.delivery.window_ms / 1000)
            self.stats.dirty_keys += 1
            self.stats.triggers += key.triggers

    def _max_keys(self, window: Window) -> int:
        return min(
            (self.definition.resources[r].delivery.max_keys for r in window.resources),
            default=REACH_MAX_BATCH,
        )

    def _kafka(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the consumer exists only while run() runs")
        return self._consumer

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
            part.running = asyncio.ensure_future(self._run_window(part, window))

    def _bring_back_held(self) -> None:
        """Held entities whose tenant Reach accepts again go back into their partition's open
        window, a window's worth at a time; and each blocked tenant whose probe is due gets one
        entity back, unless one of its entities is in a window already."""
        parts = [p for p in self._partitions.values() if not p.revoked and len(p.held)]
        for part in parts:
            room = self._release_chunk - (len(part.open) if part.open is not None else 0)
            if room > 0:
                self._readd(part, part.held.release(self._blocks.is_blocked, room))
        due = set(self._blocks.due())
        if due:
            due -= set().union(*(p.held.in_window() for p in parts))
        for tenant in due:
            for part in parts:
                probe = part.held.take_probe(tenant)
                if probe is not None:
                    self._readd(part, [probe])
                    break

    def _readd(self, part: _Partition, entities: list[tuple[Entity, HeldEntity]]) -> None:
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
            backlog = len(part.open) if part.open is not None else 0
            full = part.open is not None and backlog >= BACKLOG_FACTOR * self._max_keys(part.open)
            busy = part.running is not None or part.failed is not None
            # Too much held (a tenant refused for long): read no more until it is accepted.
            stop = (full and busy) or len(part.held) >= HELD_BOUND or saturated
            tp = [TopicPartition(part.topic, part.partition)]
            if stop and not part.paused:
                self._kafka().pause(tp)
                part.paused = True
            elif part.paused and not stop:
                self._kafka().resume(tp)
                part.paused = False

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
        records = size = 0
        for part in self._partitions.values():
            running = part.running_window if part.running is not None else None
            for window in (part.open, running, part.failed):
                if window is not None:
                    records += len(window)
                    size += window.size
            records += len(part.held)
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
        state from this loop, which already uses the consumer (pause, resume, commit)."""
        now = time.monotonic()
        if self.progress is None or not self.progress.due(now):
            return
        consumer = self._kafka()
        self.progress.observe(
            [
                PartitionProgress(
                    p.topic,
                    p.partition,
                    p.done_offset if p.done_offset is not None else p.first_offset,
                    high_watermark(consumer, p.topic, p.partition),
                )
                for p in list(self._partitions.values())
                if not p.revoked
            ],
            now,
        )

    def _count_held(self) -> None:
        self.stats.blocked_tenants = len(self._blocks.snapshot())
        self.stats.held = sum(len(p.held) for p in self._partitions.values())

    # --- one window ------------------------------------------------------------------------------

    async def _run_window(self, part: _Partition, window: Window) -> None:
        """Process, then commit; or schedule a retry. Never raises into the loop. All of it in
        the window's span (spans.py), so that its log lines carry the window's trace id."""
        attempt = part.attempts + 1
        with window_span(self.definition, part.topic, part.partition, window, attempt) as span:
            try:
                await self._process(window)
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
        latencies: list[int] = []
        for entity, causes in window.causes.items():
            if entity in window.held:
                continue  # not accepted yet
            # Snapshot reads ("r") carry the snapshot's time, not a commit's: not a latency.
            committed = [c.source_ts_ms for c in causes if c.source_ts_ms and c.op != "r"]
            if committed:
                latencies.append(max(0, now_ms - min(committed)))
        self.stats.latencies_ms.extend(latencies)
        metrics().window_finished(window, latencies)  # once per window (metrics.py: cost)

    def _schedule_retry(self, part: _Partition, window: Window, error: SyncError) -> None:
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

    async def _process(self, window: Window) -> None:
        """Every resource of the window at once (their entities are independent): one recompute
        query each, then delivery; then the dead letters, and what was held goes on the window.
        A failure of one resource fails the window, after the others finished, so a retry never
        overlaps work still in flight."""
        window.held.clear()
        outcomes = await asyncio.gather(
            *(self._resource(window, name, ids) for name, ids in window.by_resource().items()),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for outcome in outcomes:
            if isinstance(outcome, DeliveryResult):
                for letter in outcome.dead:
                    self._produce_dead_letter_record(window, letter)
                for held in outcome.held:
                    window.hold(held.resource, held.ids, held.tenant)
        # Dead letters of this window, and any produced on arrival, are durable before the commit.
        await self._flush_dead_letters()
        if errors:
            raise errors[0]
        self.stats.windows += 1
        self.stats.entities += len(window)

    async def _resource(self, window: Window, name: str, ids: list[EntityId]) -> DeliveryResult:
        resource = self.definition.resources[name]
        started = time.perf_counter()
        with recompute_span(name, len(ids)) as span:
            recomputed = await self.db.recompute(resource, ids)
            span.set_attribute("reach_sync.rows", len(recomputed.rows))
        self.stats.recomputes += 1
        recomputed_at = time.perf_counter()
        metrics().recomputed(name, recomputed_at - started, len(recomputed.rows))

        async def audit(sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
            await self._audit(window, name, sent, removed)

        result = await deliver_resource(
            name,
            resource,
            recomputed,
            client=self.client,
            last_sent=self.last_sent,
            tenants=self.db,
            gate=self._blocks,
            outstanding=self._outstanding,
            on_accepted=audit,
        )
        # Rows the source could not give (recompute.py): dead-lettered, their entities alone.
        result.dead += [DeadLetter(name, i, None, e) for i, e in recomputed.failed.items()]
        log.debug(
            "%s: %d ids, recompute %.0f ms, delivery %.0f ms (sent %d, skipped %d, deleted %d)",
            name,
            len(ids),
            (recomputed_at - started) * 1000,
            (time.perf_counter() - recomputed_at) * 1000,
            result.sent,
            result.skipped,
            result.deleted,
        )
        self.stats.add(result)
        metrics().delivered(name, result)
        return result

    async def _audit(
        self, window: Window, name: str, sent: Sequence[Sent], removed: Sequence[Removed]
    ) -> None:
        """Audit what Reach took of resource ``name`` in this window, each entity with the
        window's causes, and return once the broker acknowledged every audit record (Retryable
        otherwise, failing the window). Delivery calls this before the last-sent store
        remembers those sends, so a send is never skipped as unchanged on a retry without its
        audit record. After a failed flush the window's retry sends and audits again; the
        writer also produces the unacknowledged records again, and ``audit why`` shows a record
        produced twice once."""

        def causes(entity_id: str) -> list[Cause]:
            return window.causes.get((name, entity_id), [])

        count = self.audit.record(
            name,
            accepted=[
                Accepted(
                    s.projected,
                    causes(s.projected.external_id),
                    s.at_ms,
                    s.batch_id,
                    s.parked,
                    s.unconfirmed,
                    s.in_batch,
                )
                for s in sent
            ],
            deleted=[
                Deleted(
                    r.tenant,
                    r.external_id,
                    causes(r.external_id),
                    r.at_ms,
                    r.batch_id,
                    r.unconfirmed,
                )
                for r in removed
            ],
        )
        self._audit_writes += 1
        await self._flush_audit()
        self.stats.audited += count

    async def _flush_audit(self) -> None:
        """Return once the broker acknowledged every audit record written so far; raise the
        flush's Retryable otherwise. One flush at a time, in its own thread: a flush that began
        after this caller's records were written covers them, so windows auditing at once share
        one flush (and its failure) instead of queueing one each."""
        mine = self._audit_writes
        while True:
            flush = self._audit_flush
            if flush is None or flush.done.done():
                flush = self._start_audit_flush()
            if flush.covers >= mine:
                await asyncio.shield(flush.done)
                return
            await asyncio.wait([flush.done])  # began before these records: wait, then the next

    def _start_audit_flush(self) -> _AuditFlush:
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._audit_flusher, self.audit.flush, AUDIT_FLUSH_S)
        # Retrieved even when every window waiting on it was cancelled.
        done.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._audit_flush = _AuditFlush(self._audit_writes, done)
        return self._audit_flush

    def _commit(self, part: _Partition, window: Window) -> None:
        """Commit after a finished window, without blocking the loop:

        1. the window's end is done (a window of held entities only ends nowhere new);
        2. what it held is kept, with its offset, and what it settled is let go;
        3. commit up to the done end, but not past the lowest offset still held.

        A synchronous commit here could not finish while a rebalance callback waits on this
        loop; the revoke handler and shutdown make the final, synchronous commit from the poll
        thread (_commit_done)."""
        if window.end_offset >= 0:
            part.done_offset = max(part.done_offset or 0, window.end_offset + 1)
        part.held.settle(window)
        offset = part.commit_offset()
        if offset is None:
            return
        offsets = [TopicPartition(part.topic, part.partition, offset)]
        try:
            self._kafka().commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.warning("commit of partition %d failed: %s", part.partition, exc)
            return
        self.stats.commits += 1

    def _commit_done(self, parts: list[_Partition]) -> None:
        """Synchronously commit what is done; only from the poll thread (revoke, shutdown)."""
        done = [(p, p.commit_offset()) for p in parts]
        offsets = [TopicPartition(p.topic, p.partition, o) for p, o in done if o is not None]
        if not offsets:
            return
        try:
            if commit_within(self._kafka(), offsets, FINAL_COMMIT_BOUND_S) is None:
                log.error("final commit of %d partitions unanswered", len(offsets))
        except KafkaException as exc:
            log.warning("final commit of %d partitions failed: %s", len(offsets), exc)

    # --- dead letters ----------------------------------------------------------------------------

    def _produce_dead_letter_record(self, window: Window, letter: DeadLetter) -> None:
        now_ms = int(time.time() * 1000)
        record = dead_letter_record(
            resource=letter.resource,
            entity_id=letter.entity_id,
            tenant=letter.tenant,
            cause=window.first_cause(letter.resource, letter.entity_id),
            error=letter.error,
            attempts=1,
            first_attempt_ms=now_ms,
            last_attempt_ms=now_ms,
            payload_sha256=letter.payload_hash,
        )
        produce_dead_letter(
            self.producer, self.definition.topics.dead_letter, record, self._on_dead_letter
        )
        log.warning(
            "dead-lettered %s %s: %s",
            letter.resource,
            letter.entity_id,
            type(letter.error).__name__,
        )

    def _on_dead_letter(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._dead_letter_failures.append(str(err))

    async def _flush_dead_letters(self) -> None:
        """A dead letter is an outcome only once the broker has it."""
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(None, self.producer.flush, PRODUCER_FLUSH_S)
        failures, self._dead_letter_failures = self._dead_letter_failures, []
        if left or failures:
            raise Retryable(f"the dead-letter topic did not acknowledge: {failures[:1] or left}")

    def _dead_letter_event(self, message: Message, error: Exception) -> None:
        event = DeadLetterEvent.from_message(message, error, stage="syncer")
        produce_dead_letter(
            self.producer, self.definition.topics.dead_letter, event, self._on_dead_letter
        )
        self.stats.dead_lettered += 1

    # --- rebalance and shutdown ------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions[tp.partition] = _Partition(tp.topic, tp.partition)

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
                self._drain(parts, REVOKE_BOUND_S), self._loop
            )
            try:
                future.result(timeout=REVOKE_BOUND_S + 5)
            except concurrent.futures.TimeoutError:
                log.error(
                    "revoked partitions did not finish within %.0f s; their windows are cancelled",
                    REVOKE_BOUND_S,
                )
            for part in parts:
                if part.running is not None:
                    self._loop.call_soon_threadsafe(part.running.cancel)
        self._commit_done(parts)
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

    async def _drain(self, parts: list[_Partition], bound_s: float) -> None:
        """Finish the windows in flight (their commits happen as they finish); drop the rest,
        uncommitted, for the next owner to read again."""
        running = [p.running for p in parts if p.running is not None]
        if running:
            await asyncio.wait(running, timeout=bound_s)
        for part in parts:
            part.open = None
            part.failed = None
