"""One backfill, top to bottom: check, walk each resource page by page, wait for the outcomes.

1. Check every resource's page query and the filters on nothing, so that a broken ``ids_query``
   or ``--where`` fails before a key is written or the checkpoint touched.
2. Per resource, from the checkpoint's last id: wait while the syncer's lag is over
   ``max_lag`` (live changes never queue behind more than that), read a page of ids, make them
   dirty, and checkpoint once the broker acknowledged them.
3. Mark the checkpoint complete; then, unless told not to, wait until the syncer has committed
   past every key written (each has an outcome) and count the outcomes.

A stop between pages leaves the checkpoint where the last acknowledged page put it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from consumer.backfill.checkpoint import Checkpoint, CheckpointStore
from consumer.backfill.emit import DirtyWriter
from consumer.backfill.outcomes import Outcomes, count_outcomes, topic_ends
from consumer.backfill.scope import BackfillScope
from consumer.backfill.syncer_position import SyncerPosition
from consumer.backfill.walk import IdWalker, checked_walkers, connect
from consumer.config import SyncDefinition
from consumer.errors import ConfigurationError
from consumer.router.dirty import Cause, EntityId
from consumer.router.topics import ensure_topics

__all__ = [
    "DEFAULT_MAX_LAG",
    "BackfillOptions",
    "BackfillReport",
    "BeforePage",
    "Observer",
    "Parts",
    "run_backfill",
]

# Dirty keys waiting for the syncer above which the walk pauses: a few windows' worth, so a
# live change waits behind at most that many backfill keys (bench/backfill_latency.py).
DEFAULT_MAX_LAG = 2000
# How often the syncer's lag and commits are read while waiting on them.
WAIT_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class BackfillOptions:
    page_size: int = 500
    max_lag: int = DEFAULT_MAX_LAG
    # Keys per second at most; None: as fast as the syncer takes them (max_lag alone).
    rate: float | None = None
    restart: bool = False
    wait: bool = True


@dataclass(frozen=True, slots=True)
class BackfillReport:
    scope: BackfillScope
    run: str
    checkpoint: Checkpoint
    already_complete: bool
    stopped: bool
    written: int  # keys written by this run
    outcomes: Outcomes | None


class Observer(Protocol):
    """Where progress goes (a terminal line, metrics); every call is cheap and optional."""

    def walking(self, resource: str, walked: int, total: int | None, keys: int) -> None: ...

    def lag(self, keys: int, waiting: bool) -> None: ...

    def awaiting(self, partitions_behind: int, partitions: int) -> None: ...


class _Silent:
    def walking(self, resource: str, walked: int, total: int | None, keys: int) -> None:
        return None

    def lag(self, keys: int, waiting: bool) -> None:
        return None

    def awaiting(self, partitions_behind: int, partitions: int) -> None:
        return None


class BeforePage(Protocol):
    async def __call__(self, resource: str, ids: Sequence[EntityId]) -> None: ...


@dataclass(frozen=True, slots=True)
class Parts:
    """What a backfill works with, passed in: tests and ``run``'s resync give their own."""

    checkpoints: CheckpointStore
    writer: DirtyWriter
    position: SyncerPosition
    # Called with each page's ids before they are made dirty (a resync whose Reach schema
    # changed puts them in doubt, so that dedup sends them to the new schema).
    before_page: BeforePage | None = None


async def run_backfill(
    definition: SyncDefinition,
    scope: BackfillScope,
    parts: Parts,
    options: BackfillOptions,
    stop: threading.Event,
    observer: Observer | None = None,
    run: str | None = None,
) -> BackfillReport:
    watch = observer or _Silent()
    run = run or uuid.uuid4().hex[:12]
    scheduled = [n for n in scope.resources if definition.resources[n].delivery.scheduled]
    if options.wait and scheduled:
        # Their keys are sent at their next run: waiting would be for a tick, and outcomes
        # counted before it would be empty (docs/design.md, "Scheduled delivery").
        raise ConfigurationError(
            f"{', '.join(scheduled)}: scheduled, so sent at the next run, which a backfill does "
            "not wait for; run it with --no-wait (and --mark-complete only after that run)"
        )
    conn = await connect(definition.source.database)
    try:
        walkers = await checked_walkers(conn, definition, scope)  # 1. before any write
        checkpoint = await parts.checkpoints.start(scope.id, run, options.restart)
        already = checkpoint.completed_ms is not None
        written = 0
        if not already:
            # As `run` would: never a dirty topic auto-created with the broker's partitions.
            await asyncio.to_thread(ensure_topics, definition)
            if not checkpoint.since:
                checkpoint.since = await asyncio.to_thread(topic_ends, definition)
            await parts.checkpoints.save(checkpoint)
            cause = Cause(kind=scope.kind, run=run)
            pace = _Pace(options.rate)
            for name, walker in walkers.items():  # 2.
                written += await _walk(
                    name, walker, checkpoint, parts, options, cause, stop, watch, pace
                )
                if stop.is_set():
                    return BackfillReport(scope, run, checkpoint, False, True, written, None)
            checkpoint.completed_ms = int(time.time() * 1000)  # 3.
            await parts.checkpoints.save(checkpoint)
        outcomes = None
        if options.wait:
            if not await _await_outcomes(checkpoint, parts.position, stop, watch):
                return BackfillReport(scope, run, checkpoint, already, True, written, None)
            outcomes = await count_outcomes(
                definition, checkpoint.runs, checkpoint.keys, checkpoint.since
            )
        return BackfillReport(scope, run, checkpoint, already, False, written, outcomes)
    finally:
        await conn.close()


async def _walk(
    name: str,
    walker: IdWalker,
    checkpoint: Checkpoint,
    parts: Parts,
    options: BackfillOptions,
    cause: Cause,
    stop: threading.Event,
    watch: Observer,
    pace: _Pace,
) -> int:
    state = checkpoint.state(name)
    if state.done:
        return 0
    total = await walker.total()
    walked = 0 if state.after is None else state.keys  # resumed: an estimate for progress
    written = 0
    while not stop.is_set():
        watch.walking(name, walked, total, state.keys)
        # Room for a whole page: the lag stays within max_lag, not max_lag plus a page.
        room = max(0, options.max_lag - options.page_size)
        if not await _room(parts.position, room, stop, watch):
            break
        page = await walker.page(state.after, options.page_size)
        walked += page.walked
        if page.ids:
            if parts.before_page is not None:
                await parts.before_page(name, page.ids)
            checkpoint.reached(await parts.writer.write(name, page.ids, cause))
            state.keys += len(page.ids)
            written += len(page.ids)
        state.after = page.last
        state.done = page.last is None
        await parts.checkpoints.save(checkpoint)
        if state.done:
            watch.walking(name, walked if total is None else total, total, state.keys)
            break
        await pace.after(len(page.ids), stop)
    return written


async def _room(
    position: SyncerPosition, max_lag: int, stop: threading.Event, watch: Observer
) -> bool:
    """Wait until the syncer's lag is at most ``max_lag``; False if stopped meanwhile. Live
    keys written meanwhile can still take it over by a little: the bound is on the backfill."""
    while not stop.is_set():
        lag = await position.lag()
        waiting = lag > max_lag
        watch.lag(lag, waiting)
        if not waiting:
            return True
        await asyncio.sleep(WAIT_POLL_S)
    return False


async def _await_outcomes(
    checkpoint: Checkpoint, position: SyncerPosition, stop: threading.Event, watch: Observer
) -> bool:
    """Wait until the syncer committed past every key written; False if stopped meanwhile."""
    while not stop.is_set():
        behind = await position.behind(checkpoint.offsets)
        watch.awaiting(behind, len(checkpoint.offsets))
        if behind == 0:
            return True
        await asyncio.sleep(WAIT_POLL_S)
    return False


class _Pace:
    """At most ``rate`` keys a second on average since the walk started."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._started = time.monotonic()
        self._keys = 0

    async def after(self, keys: int, stop: threading.Event) -> None:
        if self._rate is None:
            return
        self._keys += keys
        due = self._started + self._keys / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.to_thread(stop.wait, delay)
