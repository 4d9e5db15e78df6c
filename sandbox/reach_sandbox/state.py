"""The running sandbox: its parts, their start and stop, and the admin reset.

Routes reach it through ``sandbox_of(request)``; nothing else is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import cast

from starlette.requests import Request

from reach_sandbox.auth import Authenticator
from reach_sandbox.batches import BatchService
from reach_sandbox.config import SandboxConfig
from reach_sandbox.db import Database
from reach_sandbox.faults import FaultBoard
from reach_sandbox.payloads import PayloadStore
from reach_sandbox.ratelimit import RateLimiter
from reach_sandbox.registry import Registry
from reach_sandbox.requestlog import RequestLog, write_log
from reach_sandbox.store import Store

__all__ = ["DB_FILENAME", "Sandbox", "sandbox_of"]

DB_FILENAME = "sandbox.sqlite3"
# How often buffered request-log rows are written; admin reads flush first, so this only bounds
# how much a crash can lose.
_LOG_FLUSH_INTERVAL_S = 0.5

_log = logging.getLogger(__name__)


class Sandbox:
    def __init__(self, config: SandboxConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.registry = Registry(config.validation.assert_formats)
        self.db = Database(state_dir / DB_FILENAME)
        self.store = Store(self.registry, PayloadStore(state_dir / "batches"))
        self.faults = FaultBoard(config.faults, config.random_seed)
        self.auth = Authenticator(config, self.faults.is_revoked)
        self.limiter = RateLimiter(config.rate_limits)
        self.request_log = RequestLog()
        self.batches = BatchService(config, self.db, self.store, self.registry, self.faults)
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.db.open()
        for job in await self.db.run(self.store.open, self.config):
            self.batches.enqueue(job)
        self._tasks = [
            asyncio.create_task(self.batches.sweep_forever(), name="sandbox-sweep"),
            asyncio.create_task(self._flush_forever(), name="sandbox-log-flush"),
        ]
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.batches.stop()
        await self.flush_log()
        await self.db.close()

    async def flush_log(self) -> None:
        entries = self.request_log.take()
        if entries:
            await self.db.run(write_log, entries)

    async def reset(self) -> None:
        """Back to the configured start: data, batches, log, faults, rate limits, batch order."""
        self.batches.reset()
        self.batches.set_order(self.config.batches.order)
        self.faults.clear()
        for spec in self.config.faults:
            self.faults.add(spec)
        self.limiter.configure(self.config.rate_limits)
        self.request_log.discard()
        await self.db.run(self.store.reset, self.config)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(_LOG_FLUSH_INTERVAL_S)
            try:
                await self.flush_log()
            except Exception:
                _log.exception("request log flush failed")


def sandbox_of(request: Request) -> Sandbox:
    return cast(Sandbox, request.app.state.sandbox)
