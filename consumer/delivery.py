"""Delivery of one resource's share of a window: projected records and deletes, to durable outcomes.

Every entity of the window ends in exactly one outcome: sent (Reach accepted it), skipped (Reach
already has this exact state), deleted, or dead-lettered (it can never be accepted as it is).
Anything else raises (Retryable or ConfigurationError) and the whole window is retried later:
re-sending full-state records is harmless.

Batches are waited on until Reach finished them before this returns. Together with one window in
flight per dirty-topic partition (and each entity owned by one partition) this is what keeps "at
most one unfinished Reach batch per entity", without which a slow batch could overwrite a newer
state (design.md, "Reach specifics").
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consumer.config import Resource
from consumer.dedup import LastSent, LastSentStore
from consumer.dirty import EntityId
from consumer.errors import BadRecord, Retryable, SyncError
from consumer.projection import Projected, project
from consumer.reach.batching import BatchSubmission
from consumer.reach.client import ReachClient
from consumer.reach.status import BatchState, BatchStatus
from consumer.recompute import Recomputed

__all__ = ["DeadLetter", "DeliveryResult", "deliver_resource"]

log = logging.getLogger(__name__)

# Real-time mode sends single records concurrently, this many at a time per window (the client
# bounds the total across windows: destination.max_connections).
REALTIME_CONCURRENCY = 16
# Batch status polling: start fast (a small batch is often finished within milliseconds; this
# wait is most of a real-time batch's latency), back off 1.5 times per poll to the maximum.
POLL_INTERVAL_S = 0.02
MAX_POLL_INTERVAL_S = 2.0
# wait_batches returns after this long so the caller can notice a stop request; then it waits on.
WAIT_SLICE_S = 30.0
# A record failure Reach reports because a later write of the same resource replaced it: that
# later write is ours and carries a newer state, so the record is not dead.
SUPERSEDED = "SUPERSEDED"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entity that can never be accepted as it is, and the classified error saying why."""

    resource: str
    entity_id: str
    tenant: str | None
    error: SyncError
    payload_hash: str | None = None


@dataclass
class DeliveryResult:
    sent: int = 0
    skipped: int = 0
    deleted: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    # Accepted but parked on a missing $ref in Reach: not remembered as sent, so re-sent next time.
    parked: int = 0


class TenantSource(Protocol):
    async def tenants(self, resource: Resource) -> list[str]: ...


def _dead(
    name: str, entity_id: str, tenant: str | None, error: SyncError, digest: str | None = None
) -> DeadLetter:
    return DeadLetter(name, entity_id, tenant, error, digest)


def _project_all(
    name: str, resource: Resource, recomputed: Recomputed, result: DeliveryResult
) -> list[Projected]:
    projected = []
    for entity_id, row in recomputed.rows.items():
        try:
            projected.append(project(resource, row))
        except BadRecord as exc:
            result.dead.append(_dead(name, entity_id, None, exc))
    return projected


async def _wait_finished(
    client: ReachClient, tenant: str, batch_ids: Sequence[str]
) -> dict[str, BatchStatus]:
    """Poll until every batch is finished; never gives up on its own (see module docstring)."""
    statuses: dict[str, BatchStatus] = {}
    waiting = list(batch_ids)
    while waiting:
        statuses.update(
            await client.wait_batches(
                tenant,
                waiting,
                poll_interval_s=POLL_INTERVAL_S,
                max_poll_interval_s=MAX_POLL_INTERVAL_S,
                timeout_s=WAIT_SLICE_S,
            )
        )
        waiting = [b for b in waiting if not statuses[b].finished]
        if waiting:
            log.warning(
                "%d Reach batches still unfinished after %.0f s; waiting on",
                len(waiting),
                WAIT_SLICE_S,
            )
    return statuses


async def _settle(
    client: ReachClient,
    tenant: str,
    submission: BatchSubmission,
    on_failed: Callable[[str, str, str | None], None],
) -> tuple[set[str], set[str]]:
    """Wait for a submission's batches; return (accepted ids, parked ids). Records refused
    synchronously or failed in a batch go to ``on_failed(id, reason, code)``. A submission that
    stopped early raises its error only after the batches it did send are finished, so a retry
    never overlaps a batch still running."""
    statuses = await _wait_finished(client, tenant, [b.batch_id for b in submission.batches])
    accepted: set[str] = set()
    parked: set[str] = set()
    uncertain: list[str] = []
    for rejected in submission.rejected:
        on_failed(rejected.external_id, rejected.reason, None)
    for batch in submission.batches:
        status = statuses[batch.batch_id]
        failed = {f.external_id: f for f in status.failures if f.external_id is not None}
        for external_id in batch.external_ids:
            failure = failed.get(external_id)
            if failure is not None:
                if failure.code != SUPERSEDED:
                    on_failed(external_id, failure.reason, failure.code)
            elif status.unattributed_failures or status.state is BatchState.FAILED:
                # Reach says records failed but not which: neither sent nor dead, try again.
                uncertain.append(batch.batch_id)
            elif external_id in status.pending_external_ids:
                parked.add(external_id)
            else:
                accepted.add(external_id)
    if submission.error is not None:
        raise submission.error
    if uncertain:
        batches = ", ".join(sorted(set(uncertain)))
        raise Retryable(
            f"Reach reported failures it did not attribute to records (batches {batches})"
        )
    return accepted, parked


async def _send_realtime(
    client: ReachClient, schema: str, items: Sequence[Projected], result: DeliveryResult, name: str
) -> tuple[list[Projected], SyncError | None]:
    """Single synchronous writes, bounded concurrency. Returns what Reach accepted and the first
    error that should make the window retry, so the caller can remember the accepted ones first."""
    gate = asyncio.Semaphore(REALTIME_CONCURRENCY)
    accepted: list[Projected] = []
    errors: list[SyncError] = []

    async def send(item: Projected) -> None:
        async with gate:
            try:
                await client.upsert_one(
                    item.tenant, schema, item.record, external_id=item.external_id
                )
            except BadRecord as exc:
                result.dead.append(_dead(name, item.external_id, item.tenant, exc, item.hash))
            except SyncError as exc:
                errors.append(exc)
            else:
                accepted.append(item)

    await asyncio.gather(*(send(item) for item in items))
    return accepted, (errors[0] if errors else None)


async def _send_batch(
    client: ReachClient,
    schema: str,
    tenant: str,
    items: Sequence[Projected],
    result: DeliveryResult,
    name: str,
) -> tuple[list[Projected], SyncError | None]:
    by_id = {item.external_id: item for item in items}

    def failed(external_id: str, reason: str, code: str | None) -> None:
        error = BadRecord(reason if code is None else f"{code}: {reason}", external_id=external_id)
        result.dead.append(_dead(name, external_id, tenant, error, by_id[external_id].hash))

    submission = await client.upsert_batch(tenant, schema, {i.external_id: i.record for i in items})
    try:
        accepted, parked = await _settle(client, tenant, submission, failed)
    except SyncError as exc:
        return [], exc
    result.parked += len(parked)
    return [by_id[i] for i in accepted], None


async def deliver_resource(
    name: str,
    resource: Resource,
    recomputed: Recomputed,
    *,
    client: ReachClient,
    last_sent: LastSentStore,
    tenants: TenantSource,
) -> DeliveryResult:
    """Project, skip what Reach already has, send the rest, delete what is gone."""
    result = DeliveryResult()
    projected = _project_all(name, resource, recomputed, result)
    ids: list[EntityId] = [p.external_id for p in projected]
    ids += [str(i) for i in recomputed.gone]
    known = await last_sent.get_many(name, ids)

    to_send: list[Projected] = []
    moved: dict[str, list[str]] = defaultdict(list)  # old tenant -> ids that changed tenant
    for item in projected:
        previous = None if known is None else known.get(item.external_id)
        if previous == LastSent(item.tenant, item.hash):
            result.skipped += 1
            continue
        if previous is not None and previous.tenant != item.tenant:
            moved[previous.tenant].append(item.external_id)
        to_send.append(item)

    # Upserts and deletes concern different entities (or, for an entity that moved, different
    # tenants), so they go at once; the first failure is raised after both finished.
    outcomes = await asyncio.gather(
        _upserts(name, resource, to_send, client, last_sent, result),
        _deletes(name, resource, recomputed.gone, known, moved, client, last_sent, tenants, result),
        return_exceptions=True,
    )
    _raise_first(outcomes)
    return result


def _raise_first(outcomes: Sequence[object]) -> None:
    """Raise the first exception among gathered outcomes (errors before cancellations)."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    errors.sort(key=lambda e: isinstance(e, asyncio.CancelledError))
    if errors:
        raise errors[0]


async def _upserts(
    name: str,
    resource: Resource,
    to_send: list[Projected],
    client: ReachClient,
    last_sent: LastSentStore,
    result: DeliveryResult,
) -> None:
    """Send per tenant, tenants at once; remember what Reach accepted even when a part fails,
    then raise the first failure (after every tenant finished)."""
    by_tenant: dict[str, list[Projected]] = defaultdict(list)
    for item in to_send:
        by_tenant[item.tenant].append(item)

    async def one_tenant(tenant: str, items: list[Projected]) -> SyncError | None:
        delivery = resource.delivery
        if delivery.mode == "realtime" and len(items) <= delivery.batch_over:
            accepted, error = await _send_realtime(
                client, resource.reach_schema, items, result, name
            )
        else:
            accepted, error = await _send_batch(
                client, resource.reach_schema, tenant, items, result, name
            )
        await last_sent.record_sent(
            name, [(i.external_id, LastSent(i.tenant, i.hash)) for i in accepted]
        )
        result.sent += len(accepted)
        return error

    errors = await asyncio.gather(*(one_tenant(t, items) for t, items in by_tenant.items()))
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


async def _deletes(
    name: str,
    resource: Resource,
    gone: Sequence[EntityId],
    known: dict[str, LastSent] | None,
    moved: dict[str, list[str]],
    client: ReachClient,
    last_sent: LastSentStore,
    tenants: TenantSource,
    result: DeliveryResult,
) -> None:
    targets: dict[str, list[str]] = defaultdict(list, {t: list(ids) for t, ids in moved.items()})
    unknown: list[str] = []
    for entity_id in map(str, gone):
        previous = None if known is None else known.get(entity_id)
        if previous is not None:
            targets[previous.tenant].append(entity_id)
        else:
            unknown.append(entity_id)
    if unknown:
        if resource.tenants_query is None:
            for entity_id in unknown:
                reason = (
                    "deleted at the source, but its tenant is unknown"
                    " (no last-sent entry and no tenants_query)"
                )
                result.dead.append(_dead(name, entity_id, None, BadRecord(reason)))
        else:
            for tenant in await tenants.tenants(resource):
                targets[tenant].extend(unknown)

    gone_ids = [str(g) for g in gone]
    deleted: set[str] = set()

    async def one_tenant(tenant: str, ids: list[str]) -> None:
        def failed(external_id: str, reason: str, code: str | None) -> None:
            error = BadRecord(f"delete refused: {reason}", external_id=external_id)
            result.dead.append(_dead(name, external_id, tenant, error))

        submission = await client.delete_batch(tenant, resource.reach_schema, ids)
        accepted, _ = await _settle(client, tenant, submission, failed)
        deleted.update(accepted.intersection(gone_ids))

    outcomes = await asyncio.gather(
        *(one_tenant(t, ids) for t, ids in targets.items()), return_exceptions=True
    )
    # What was deleted is forgotten even when another tenant's delete failed.
    await last_sent.forget(name, [g for g in gone_ids if g in deleted])
    result.deleted += len(deleted)
    _raise_first(outcomes)
