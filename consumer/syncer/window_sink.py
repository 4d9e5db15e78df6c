"""One window through the sink: recompute, project, dedup, deliver, and make it durable.

Every resource of the window is recomputed with one query and delivered at once (sink/); what a
request carries is audited ahead (``sending``), and the audit topic has acknowledged it, before
the request leaves (delivery.py calls ``announce``); what Reach took is audited, and the audit
topic has acknowledged it, before the last-sent store remembers it (delivery.py calls
``audit``); dead letters are acknowledged before the window may commit, each attempt's
judged by its own delivery reports (``_Deliveries``). The syncer's loop
hands windows here inside the window's span (so every recompute, dedup and Reach request is its
child) and commits what returns; anything raised fails the window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from confluent_kafka import KafkaError, Message, Producer

from consumer.config import SyncDefinition
from consumer.errors import Retryable
from consumer.observe.metrics import NO_INSTRUMENTS, Instruments
from consumer.observe.spans import recompute_span
from consumer.reach.client import ReachClient
from consumer.records.audit import FLUSH_TIMEOUT_S as AUDIT_FLUSH_S
from consumer.records.audit import AuditWriter
from consumer.records.deadletter import DeliveryCallback, dead_letter_record, produce_dead_letter
from consumer.router.dirty import Cause, EntityId
from consumer.sink.dedup import LastSentStore
from consumer.sink.delivery import (
    DeadLetter,
    DeliveryResult,
    TenantGate,
    deliver_resource,
)
from consumer.sink.follow import Outstanding
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.recompute import SourceDatabase
from consumer.syncer.stats import SyncerStats
from consumer.syncer.windows import Entity, Window

__all__ = ["WindowSink"]

log = logging.getLogger(__name__)

# How long a window waits for the broker to acknowledge its dead letters.
PRODUCER_FLUSH_S = 30.0


class _Deliveries:
    """The delivery reports of one attempt's dead letters. The producer is shared, and a
    flush serves whichever reports are due, another window's too: each letter reports to its
    own attempt, so a failure is never taken by the wrong window. Reports arrive on the
    flushing thread; they are read on the loop after this attempt's flush returned, which is
    after every report of a letter produced before it was served."""

    def __init__(self) -> None:
        self.produced = 0
        self.failed: list[str] = []
        self.delivered: set[int] = set()

    def report(self, letter: int) -> DeliveryCallback:
        self.produced += 1

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.delivered.add(letter)
            else:
                self.failed.append(str(error))

        return delivered


@dataclass(frozen=True, slots=True)
class _AuditFlush:
    """One flush of the audit writer: it covers the first ``covers`` audit writes."""

    covers: int
    done: asyncio.Future[None]


def _with_causes(
    causes: Mapping[Entity, list[Cause]], name: str, sent: Sequence[Sent]
) -> list[Sent]:
    """``replace(s, causes=...)`` for each, without its per-call field walk (a window audits
    thousands); a test keeps the fields copied equal to Sent's."""
    none: list[Cause] = []
    return [
        Sent(
            s.projected,
            s.at_ms,
            s.batch_id,
            s.parked,
            s.unconfirmed,
            s.in_batch,
            causes.get((name, s.projected.external_id), none),
        )
        for s in sent
    ]


class WindowSink:
    """Processes windows for the syncer; ``process`` raises what fails one (SyncError).

    What it talks to is passed in: the Reach client, the source database, the last-sent store,
    the producer of dead letters, the audit writer, the tenant gate (which tenants Reach
    refuses), the process's record of batches not followed to their end, and the instruments
    metrics are recorded into.
    """

    def __init__(
        self,
        definition: SyncDefinition,
        *,
        client: ReachClient,
        db: SourceDatabase,
        last_sent: LastSentStore,
        producer: Producer,
        audit: AuditWriter,
        gate: TenantGate,
        stats: SyncerStats,
        outstanding: Outstanding | None = None,
        instruments: Instruments = NO_INSTRUMENTS,
    ) -> None:
        self.definition = definition
        self._instruments = instruments
        self.stats = stats
        self._client = client
        self._db = db
        self._last_sent = last_sent
        self._producer = producer
        self._audit = audit
        self._gate = gate
        self._outstanding = Outstanding() if outstanding is None else outstanding
        # Audit flushes wait on the broker in this one thread, one at a time: never in the
        # loop, and never filling the default executor while the broker is slow. Writes are
        # counted so that a flush knows whose records it covers (_flush_audit).
        self._audit_flusher = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="audit-flush"
        )
        self._audit_writes = 0
        self._audit_flush: _AuditFlush | None = None

    def close(self) -> None:
        """Wait for an audit flush still running; the sink takes no window after this."""
        self._audit_flusher.shutdown(wait=True)

    async def flush(self, timeout_s: float = PRODUCER_FLUSH_S) -> None:
        """At shutdown: what was produced (dead letters) reaches the broker, bounded."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._producer.flush, timeout_s)

    async def process(self, window: Window) -> None:
        """Every resource of the window at once (their entities are independent): one recompute
        query each, then delivery; then the dead letters, and what was held goes on the window.
        A failure of one resource fails the window, after the others finished, so a retry never
        overlaps work still in flight."""
        window.held.clear()
        deliveries = _Deliveries()
        # The messages that were no dirty key, as they arrived; again on a retry, until acked.
        arrived = window.dead_letters
        for n, event in enumerate(arrived):
            produce_dead_letter(
                self._producer, self._dead_letter_topic, event, deliveries.report(n)
            )
        outcomes = await asyncio.gather(
            *(self._resource(window, name, ids) for name, ids in window.by_resource().items()),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for outcome in outcomes:
            if isinstance(outcome, DeliveryResult):
                for letter in outcome.dead:
                    self._produce_dead_letter_record(window, letter, deliveries.report(-1))
                for held in outcome.held:
                    window.hold(held.resource, held.ids, held.tenant)
        # The window's dead letters are durable before it may commit.
        if deliveries.produced:
            try:
                await self._flush_dead_letters(deliveries)
            finally:
                window.dead_letters = [
                    e for n, e in enumerate(arrived) if n not in deliveries.delivered
                ]
        if errors:
            raise errors[0]
        self.stats.windows += 1
        self.stats.entities += len(window)

    async def _resource(self, window: Window, name: str, ids: list[EntityId]) -> DeliveryResult:
        resource = self.definition.resources[name]
        started = time.perf_counter()
        with recompute_span(name, len(ids)) as span:
            recomputed = await self._db.recompute(resource, ids)
            span.set_attribute("reach_sync.rows", len(recomputed.rows))
        self.stats.recomputes += 1
        recomputed_at = time.perf_counter()
        self._instruments.recomputed(name, recomputed_at - started, len(recomputed.rows))

        async def audit(sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
            await self.audit(window, name, sent, removed)

        async def announce(sending: Sequence[Sending], deleting: Sequence[Deleting]) -> None:
            await self.announce(window, name, sending, deleting)

        result = await deliver_resource(
            name,
            resource,
            recomputed,
            client=self._client,
            last_sent=self._last_sent,
            tenants=self._db,
            gate=self._gate,
            outstanding=self._outstanding,
            on_accepted=audit,
            on_sending=announce,
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
        self._instruments.delivered(name, result)
        return result

    async def announce(
        self, window: Window, name: str, sending: Sequence[Sending], deleting: Sequence[Deleting]
    ) -> None:
        """Audit ahead what one request of resource ``name`` is about to carry (outcome
        ``sending``), each entity with the window's causes, and return once the broker
        acknowledged every record (Retryable otherwise: delivery then does not make the
        request, and the window fails). So a state Reach may apply always has an audit record,
        even when the process ends before the answer and its outcome record. Nothing is
        remembered because of these records."""
        none: list[Cause] = []
        causes = window.causes
        count = self._audit.announce(
            name,
            sending=[
                Sending(
                    s.projected,
                    s.at_ms,
                    s.in_batch,
                    causes.get((name, s.projected.external_id), none),
                )
                for s in sending
            ],
            deleting=[replace(d, causes=causes.get((name, d.external_id), none)) for d in deleting],
        )
        self._audit_writes += 1
        await self._flush_audit()
        self.stats.announced += count

    async def audit(
        self, window: Window, name: str, sent: Sequence[Sent], removed: Sequence[Removed]
    ) -> None:
        """Audit what Reach took of resource ``name`` in this window, each entity with the
        window's causes, and return once the broker acknowledged every audit record (Retryable
        otherwise, failing the window). Delivery calls this before the last-sent store
        remembers those sends, so a send is never skipped as unchanged on a retry without its
        audit record. After a failed flush the window's retry sends and audits again; the
        writer also produces the unacknowledged records again, and ``audit why`` shows a record
        produced twice once."""

        count = self._audit.record(
            name,
            accepted=_with_causes(window.causes, name, sent),
            deleted=[
                replace(r, causes=window.causes.get((name, r.external_id), [])) for r in removed
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
        done = loop.run_in_executor(self._audit_flusher, self._audit.flush, AUDIT_FLUSH_S)
        # Retrieved even when every window waiting on it was cancelled.
        done.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._audit_flush = _AuditFlush(self._audit_writes, done)
        return self._audit_flush

    # --- dead letters ----------------------------------------------------------------------------

    def _produce_dead_letter_record(
        self, window: Window, letter: DeadLetter, on_delivery: DeliveryCallback
    ) -> None:
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
        produce_dead_letter(self._producer, self._dead_letter_topic, record, on_delivery)
        log.warning(
            "dead-lettered %s %s: %s",
            letter.resource,
            letter.entity_id,
            type(letter.error).__name__,
        )

    @property
    def _dead_letter_topic(self) -> str:
        return self.definition.topics.dead_letter

    async def _flush_dead_letters(self, deliveries: _Deliveries) -> None:
        """A dead letter is an outcome only once the broker has it."""
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(None, self._producer.flush, PRODUCER_FLUSH_S)
        if left or deliveries.failed:
            failed = deliveries.failed[:1] or left
            raise Retryable(f"the dead-letter topic did not acknowledge: {failed}")
