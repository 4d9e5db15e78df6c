"""The asynchronous side of batches: accept, queue, process in the background, expire.

One worker per tenant, so a slow or delayed tenant does not hold the others up; all of them
share the single database thread, which is what serialises the actual writes. By default a
tenant's batches apply in arrival order (last write wins, §7 Q16).

Reach documents no order across batches, so ``batches.order.shuffle`` (or
``PUT /_admin/batch-order``) makes each pick uniform among the tenant's batches accepted and not
yet started, drawn from a seeded generator; any two batches queued at the same time then apply
in either order with even odds. A fast worker would almost always find one batch queued and
reorder nothing, so before each pick it waits until the oldest queued batch has waited
``gather_seconds``: an idle tenant's batch stays queued that long, and one sent meanwhile (a
client's quick resend) is queued with it. That costs a lone batch at most ``gather_seconds`` and
a backlog nothing. A shuffled worker lets each batch finish before the next pick, so history
``seq`` stays the real apply order.

Sink mode (``PUT /_admin/sink``, off at start and after a reset; for throughput benchmarks only,
README "Sink mode"): an upload or patch batch that passed the request checks is stored as a
batch row that is already a success of all its records, and nothing else happens: no body kept,
no worker, no record applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from reach_sandbox.batch_rows import BatchJob
from reach_sandbox.config import BatchOrderConfig, SandboxConfig
from reach_sandbox.db import Database
from reach_sandbox.faults import FaultBoard
from reach_sandbox.registry import Registry
from reach_sandbox.store import Store

__all__ = ["BatchService"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Queue:
    """A tenant's batches accepted and not yet started, oldest first, with when each was queued
    (monotonic seconds)."""

    jobs: deque[tuple[float, BatchJob]] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


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
        self._queues: dict[str, _Queue] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Bumped by a reset: a job taken before it must not write into the state after it.
        self._epoch = 0
        self._order: BatchOrderConfig
        self._rngs: dict[str, random.Random] = {}
        self.set_order(config.batches.order)
        self.sink = False

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

    async def submit_unapplied(self, job: BatchJob, total: int, key: str | None) -> str:
        """Sink mode: record the batch as succeeded without applying it; returns its id (an
        earlier one's for a reused key)."""
        earlier = await self._db.run(self._store.accept_unapplied, job, total, key, time.time())
        return earlier if earlier is not None else job.id

    def enqueue(self, job: BatchJob) -> None:
        queue = self._queues.get(job.tenant_id)
        if queue is None:
            queue = self._queues[job.tenant_id] = _Queue()
            self._workers[job.tenant_id] = asyncio.create_task(
                self._work(job.tenant_id, queue), name=f"sandbox-batches-{job.tenant_id}"
            )
        self._unfinished += 1
        self._idle.clear()
        queue.jobs.append((time.monotonic(), job))
        queue.ready.set()

    @property
    def order(self) -> BatchOrderConfig:
        """The order settings in force, with the seed actually used."""
        return self._order

    def set_order(self, settings: BatchOrderConfig) -> BatchOrderConfig:
        """Switch the order at run time; every tenant's generator restarts from the seed."""
        seed = settings.seed
        if seed is None:
            seed = self._config.random_seed
        if seed is None:
            seed = secrets.randbelow(1 << 31)
        self._order = settings.model_copy(update={"seed": seed})
        self._rngs.clear()
        return self._order

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
        """Drop queued jobs (those already handed to the database thread skip themselves) and
        leave sink mode."""
        self._epoch += 1
        self.sink = False
        for queue in self._queues.values():
            while queue.jobs:
                queue.jobs.popleft()
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

    async def _work(self, tenant_id: str, queue: _Queue) -> None:
        """Hand the tenant's batches to the database thread, in arrival or shuffled order.

        In arrival order a batch without a delay is queued there without waiting for the one
        before it, so the database thread goes from batch to batch without a round trip through
        this loop; the thread's FIFO keeps them in order. A delayed batch holds the tenant's
        later ones back (in both orders: it has started).
        """
        while True:
            while not queue.jobs:
                queue.ready.clear()
                await queue.ready.wait()
            if self._order.shuffle:
                await self._gather(queue)
                if not queue.jobs:  # a reset emptied it meanwhile
                    continue
            shuffled = self._order.shuffle
            job = self._take(tenant_id, queue, shuffled)
            epoch = self._epoch
            try:
                await self._delay(job)
                applied = self._submit(job, epoch)
            except Exception:
                _log.exception("batch %s could not be processed", job.id)
                self._done()
                continue
            if shuffled:
                await asyncio.wait([applied])

    async def _gather(self, queue: _Queue) -> None:
        """Wait until the oldest queued batch has waited ``gather_seconds`` (settings and the
        queue may change meanwhile: both are read again after every sleep)."""
        while queue.jobs and self._order.shuffle:
            wait = queue.jobs[0][0] + self._order.gather_seconds - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _take(self, tenant_id: str, queue: _Queue, shuffled: bool) -> BatchJob:
        """The oldest batch, or with ``shuffled`` a uniform pick among all queued ones. A tenant
        draws only when there is a choice, from its own generator, so its picks depend on the
        seed and its own queue alone."""
        index = 0
        if shuffled and len(queue.jobs) > 1:
            rng = self._rngs.get(tenant_id)
            if rng is None:
                rng = self._rngs[tenant_id] = random.Random(self._order.seed)  # noqa: S311
            index = rng.randrange(len(queue.jobs))
        _queued_at, job = queue.jobs[index]
        del queue.jobs[index]
        return job

    async def _delay(self, job: BatchJob) -> None:
        """Hold a batch in ``processing`` for the configured delay and any delay fault."""
        tenant = self._registry.tenants.get(job.tenant_id)
        delay = self._config.batches.processing_delay_seconds
        if tenant is not None:
            delay += self._faults.batch_delay(tenant, job.options.path)
        if delay > 0:
            await self._db.run(self._store.start, job.id, time.time())
            await asyncio.sleep(delay)

    def _submit(self, job: BatchJob, epoch: int) -> asyncio.Future[None]:
        """Queue the batch on the database thread; it skips itself if a reset came since
        ``epoch``, the moment the worker took it."""
        tenant = self._registry.tenants.get(job.tenant_id)
        inject = None if tenant is None else self._faults.record_injector(tenant, job.options.path)
        async_mode = self._config.validation.mode == "async"
        future = self._db.submit(
            self._store.process_batch, job, inject, async_mode, lambda: epoch == self._epoch
        )
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: asyncio.Future[None]) -> None:
        self._done()
        if not future.cancelled() and future.exception() is not None:
            _log.error("batch processing failed", exc_info=future.exception())
