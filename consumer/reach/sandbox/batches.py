"""The asynchronous side of batches: accept, queue, process in the background, expire.

One FIFO worker per tenant: a tenant's batches apply in arrival order (so the last write wins,
§7 Q16), and a slow or delayed tenant does not hold the others up. All of them share the single
database thread, which is what serialises the actual writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from consumer.reach.sandbox.batch_rows import BatchJob
from consumer.reach.sandbox.config import SandboxConfig
from consumer.reach.sandbox.db import Database
from consumer.reach.sandbox.faults import FaultBoard
from consumer.reach.sandbox.registry import Registry
from consumer.reach.sandbox.store import Store

__all__ = ["BatchService"]

_log = logging.getLogger(__name__)


class BatchService:
    def __init__(
        self,
        config: SandboxConfig,
        db: Database,
        store: Store,
        registry: Registry,
        faults: FaultBoard,
    ) -> None:
        self._config = config
        self._db = db
        self._store = store
        self._registry = registry
        self._faults = faults
        self._queues: dict[str, asyncio.Queue[BatchJob]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Bumped by a reset: a job taken before it must not write into the state after it.
        self._epoch = 0

    @property
    def queued(self) -> int:
        """Batches accepted and not yet processed (parked records do not count)."""
        return self._unfinished

    async def submit(self, job: BatchJob, payload: bytes, total: int, key: str | None) -> str:
        """Store and queue a batch; returns its id (an earlier one's for a reused key)."""
        earlier = await self._db.run(self._store.accept_batch, job, payload, total, key)
        if earlier is not None:
            return earlier
        self.enqueue(job)
        return job.id

    def enqueue(self, job: BatchJob) -> None:
        queue = self._queues.get(job.tenant_id)
        if queue is None:
            queue = self._queues[job.tenant_id] = asyncio.Queue()
            self._workers[job.tenant_id] = asyncio.create_task(
                self._work(queue), name=f"sandbox-batches-{job.tenant_id}"
            )
        self._unfinished += 1
        self._idle.clear()
        queue.put_nowait(job)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once every accepted batch has been processed, False after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def sweep_forever(self) -> None:
        """Expire parked records on a short period, so an expiry is reported about when due."""
        interval = self._config.batches.pending_sweep_interval_seconds
        while True:
            await asyncio.sleep(interval)
            if self._store.pending.count:
                try:
                    await self._db.run(self._store.sweep, time.time())
                except Exception:
                    _log.exception("pending sweep failed")

    def reset(self) -> None:
        """Drop queued jobs; those already handed to the database thread skip themselves."""
        self._epoch += 1
        for queue in self._queues.values():
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()
                self._done()

    async def stop(self) -> None:
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        self._queues.clear()

    def _done(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0:
            self._idle.set()

    async def _work(self, queue: asyncio.Queue[BatchJob]) -> None:
        """Hand the tenant's batches to the database thread in order.

        A batch without a delay is queued there without waiting for the one before it, so the
        database thread goes from batch to batch without a round trip through this loop; the
        thread's FIFO keeps them in order. A delayed batch holds the tenant's later ones back.
        """
        while True:
            job = await queue.get()
            queue.task_done()
            epoch = self._epoch
            try:
                await self._delay(job)
                self._submit(job, epoch)
            except Exception:
                _log.exception("batch %s could not be processed", job.id)
                self._done()

    async def _delay(self, job: BatchJob) -> None:
        """Hold a batch in ``processing`` for the configured delay and any delay fault."""
        tenant = self._registry.tenants.get(job.tenant_id)
        delay = self._config.batches.processing_delay_seconds
        if tenant is not None:
            delay += self._faults.batch_delay(tenant, job.options.path)
        if delay > 0:
            await self._db.run(self._store.start, job.id, time.time())
            await asyncio.sleep(delay)

    def _submit(self, job: BatchJob, epoch: int) -> None:
        """Queue the batch on the database thread; it skips itself if a reset came since
        ``epoch``, the moment the worker took it."""
        tenant = self._registry.tenants.get(job.tenant_id)
        inject = None if tenant is None else self._faults.record_injector(tenant, job.options.path)
        async_mode = self._config.validation.mode == "async"
        future = self._db.submit(
            self._store.process_batch, job, inject, async_mode, lambda: epoch == self._epoch
        )
        future.add_done_callback(self._finished)

    def _finished(self, future: asyncio.Future[None]) -> None:
        self._done()
        if not future.cancelled() and future.exception() is not None:
            _log.error("batch processing failed", exc_info=future.exception())
