"""Following Reach batches to their end, and what an attempt could not follow.

Reach applies batches in no order, so an entity with two unfinished batches could see the older
state land last, a stale overwrite nothing corrects: a batch is never abandoned. ``follow`` asks
about accepted batches until they finished, asking again after a failed status read with full
jitter (capped at ``STATUS_RETRY_CAP_S``), for at most ``FOLLOW_BOUND_S`` of failures in a row.
What an attempt could not follow, and a batch request whose answer was lost, is kept in
``Outstanding``; the next send of that resource to that tenant in this process follows it to
its end first. ``Outstanding`` dies with the process (docs/design.md, "Ambiguous sends").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from consumer.errors import Retryable
from consumer.reach.client import ReachClient
from consumer.reach.status import BatchStatus
from consumer.retry_policy import retry_delay

__all__ = [
    "FOLLOW_BOUND_S",
    "Followed",
    "OnFinished",
    "Outstanding",
    "follow",
]

log = logging.getLogger(__name__)

# Status polling: start fast (a small batch is often finished within milliseconds; this wait is
# most of a real-time batch's latency), back off 1.5 times per poll to the maximum.
POLL_INTERVAL_S = 0.02
MAX_POLL_INTERVAL_S = 2.0
# One wait_batches call returns after this long, so a batch still running is logged.
WAIT_SLICE_S = 30.0
# Failed status reads are asked again after a full-jitter delay from this base to this cap...
STATUS_RETRY_BASE_S = 0.5
STATUS_RETRY_CAP_S = 30.0
# ...for at most this long in a row; then the attempt fails and the batch is kept (Outstanding).
# Ten minutes covers a restart or a failover of Reach's API; the follow-up goes on afterwards.
FOLLOW_BOUND_S = 600.0


@dataclass(frozen=True, slots=True)
class Followed:
    """Each batch's final status, and when it was seen finished (epoch ms)."""

    statuses: dict[str, BatchStatus]
    finished_at: dict[str, int]


class FollowGivenUp(Retryable):
    """The status of these batches could not be read for ``FOLLOW_BOUND_S``."""


def _now_ms() -> int:
    return int(time.time() * 1000)


async def follow(
    client: ReachClient, tenant: str, batch_ids: Sequence[str], *, bound_s: float = FOLLOW_BOUND_S
) -> Followed:
    """Wait until every batch finished (module docstring). A batch still running is waited on
    without limit: Reach has it, and only its end says what it did."""
    statuses: dict[str, BatchStatus] = {}
    finished_at: dict[str, int] = {}
    waiting = list(dict.fromkeys(batch_ids))
    failures = 0
    failing_since = 0.0
    while waiting:
        try:
            read = await client.wait_batches(
                tenant,
                waiting,
                poll_interval_s=POLL_INTERVAL_S,
                max_poll_interval_s=MAX_POLL_INTERVAL_S,
                timeout_s=WAIT_SLICE_S,
            )
        except Retryable as exc:
            now = time.monotonic()
            failing_since = failing_since if failures else now
            failures += 1
            if now - failing_since >= bound_s:
                raise FollowGivenUp(
                    f"the status of {len(waiting)} Reach batches could not be read for"
                    f" {now - failing_since:.0f} s: {exc}"
                ) from exc
            delay = retry_delay(
                failures,
                base_s=STATUS_RETRY_BASE_S,
                cap_s=STATUS_RETRY_CAP_S,
                retry_after_s=exc.retry_after_s,
            )
            log.warning(
                "status of %d Reach batches not read (%s); asking again in %.1f s",
                len(waiting),
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            continue
        failures = 0
        statuses.update(read)
        seen_ms = _now_ms()
        finished_at.update((b, seen_ms) for b in waiting if read[b].finished)
        waiting = [b for b in waiting if not read[b].finished]
        if waiting:
            log.warning(
                "%d Reach batches still unfinished after %.0f s; waiting on",
                len(waiting),
                WAIT_SLICE_S,
            )
    return Followed(statuses, finished_at)


# Told what a kept batch did once it finished (delivery audits what it accepted).
OnFinished = Callable[[Followed], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Kept:
    """Work an attempt left: ``what`` it is (for the log), and how to follow it to its end."""

    what: str
    follow_up: Callable[[ReachClient, float], Awaitable[None]]


class Outstanding:
    """Per resource and tenant, the batches earlier attempts could not follow to their end.

    One per process (the syncer's): ``settle`` runs before every send of a resource to a
    tenant, under one lock per pair, so that a new batch never overlaps a kept one. It also
    carries the process's bound on failed status reads (``follow``).
    """

    def __init__(self, follow_bound_s: float = FOLLOW_BOUND_S) -> None:
        self.follow_bound_s = follow_bound_s
        self._kept: dict[tuple[str, str], list[_Kept]] = {}
        # Kept once made: a lock dropped while a caller waits on it would let two callers work
        # on one list. One per resource and tenant that ever had something kept.
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._kept.values())

    def keep_batches(
        self, resource: str, tenant: str, batch_ids: Sequence[str], on_finished: OnFinished
    ) -> None:
        """Batches whose end was not seen; ``on_finished`` hears what they did."""
        if not batch_ids:
            return
        ids = tuple(batch_ids)

        async def follow_up(client: ReachClient, bound_s: float) -> None:
            await on_finished(await follow(client, tenant, ids, bound_s=bound_s))

        self._keep(resource, tenant, _Kept(f"{len(ids)} batches", follow_up))

    def keep_lost(self, resource: str, tenant: str, schema: str, batch_type: str) -> None:
        """A batch request whose answer was lost: the tenant's unfinished batches of that schema
        and type are waited for."""

        async def follow_up(client: ReachClient, bound_s: float) -> None:
            lost = await client.unfinished_batches(tenant, schema, batch_type)
            await follow(client, tenant, lost, bound_s=bound_s)

        self._keep(resource, tenant, _Kept("an answer was lost", follow_up))

    def _keep(self, resource: str, tenant: str, kept: _Kept) -> None:
        self._kept.setdefault((resource, tenant), []).append(kept)
        log.warning(
            "%s: Reach work for tenant %s kept to follow before its next send (%s)",
            resource,
            tenant,
            kept.what,
        )

    async def settle(self, resource: str, tenant: str, client: ReachClient) -> None:
        """Follow what earlier attempts left for this resource and tenant to its end; raises
        (keeping what is left) when that cannot be done now."""
        key = (resource, tenant)
        if not self._kept.get(key):
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            kept = self._kept.get(key, [])
            while kept:
                await kept[0].follow_up(client, self.follow_bound_s)
                kept.pop(0)
            self._kept.pop(key, None)
