"""Delivery of one resource's share of a window: projected records and deletes, to durable outcomes.

Every entity ends in one outcome: sent, skipped (Reach has this exact state), deleted,
dead-lettered, or held (Reach refuses its tenant for now; tenant_gate.py). Anything else raises
and the whole window is retried: re-sending full-state records is harmless. Entries are put in
doubt before anything is sent (dedup.py); what a request carries is told to ``on_sending`` (the
audit's write-ahead record) before the request is made, and the request is not made when that
fails; what Reach took is told to ``on_accepted`` (the audit) before it is remembered; lost
answers are reported as unconfirmed, never remembered. Batches are followed to their end
(follow.py, settlement.py), and every tenant's sends end before this returns: an entity never
has two unfinished batches. The whole story: docs/design.md, "Delivery", "Ambiguous sends" and
"Audit".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consumer.config import Resource
from consumer.errors import BadRecord, ConfigurationError, Retryable, SyncError
from consumer.observe.spans import stage_span
from consumer.reach.client import DELETE_BATCH_TYPE, UPSERT_BATCH_TYPE, ReachClient
from consumer.router.dirty import EntityId
from consumer.sink.dedup import LastSent, LastSentStore
from consumer.sink.follow import Outstanding
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.projection import Projected, projector
from consumer.sink.recompute import Recomputed
from consumer.sink.settlement import Refusal, Settlement, settle
from consumer.sink.tenant_gate import (
    AlwaysOpen,
    Attempt,
    TenantGate,
    blocks_tenant,
    first_error,
    through_gate,
)

__all__ = [
    "DeadLetter",
    "DeliveryResult",
    "Held",
    "OnAccepted",
    "OnSending",
    "TenantGate",
    "deliver_resource",
]

log = logging.getLogger(__name__)

# Real-time mode sends single records concurrently, this many at a time per window (the client
# bounds the total across windows: destination.max_connections).
REALTIME_CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entity that can never be accepted as it is, and the classified error saying why."""

    resource: str
    entity_id: str
    tenant: str | None
    error: SyncError
    payload_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """Entities of one resource and tenant that Reach refuses for now (``error``, a 401/403):
    neither sent nor dead-lettered; the syncer keeps them until the tenant is accepted again."""

    resource: str
    tenant: str
    ids: tuple[str, ...]
    error: ConfigurationError


# Told what Reach took, before it is remembered; raises (Retryable) when that cannot be made
# durable, which fails the window. Called once per request (one tenant's records or deletes).
OnAccepted = Callable[[Sequence[Sent], Sequence[Removed]], Awaitable[None]]


async def _nobody(sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
    return None


# Told what a request is about to carry, before it is made: the records (or deletes) that may
# change what Reach holds from then on, whatever becomes of the answer. Raises (Retryable) when
# that cannot be made durable: then the request is not made, and the window fails. Called once
# per tenant's send (its batch requests, its single writes, or its deletes); nothing is
# remembered because of it.
OnSending = Callable[[Sequence[Sending], Sequence[Deleting]], Awaitable[None]]


async def _unannounced(sending: Sequence[Sending], deleting: Sequence[Deleting]) -> None:
    return None


@dataclass
class DeliveryResult:
    sent: int = 0
    skipped: int = 0
    deleted: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    # Accepted but parked on a missing $ref in Reach: not remembered as sent, so re-sent next time.
    parked: int = 0

    def hold(
        self, resource: str, tenant: str, ids: Sequence[str], error: ConfigurationError
    ) -> None:
        if ids:
            self.held.append(Held(resource, tenant, tuple(ids), error))


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
    project = projector(resource)
    for entity_id, row in recomputed.rows.items():
        try:
            projected.append(project(row))
        except BadRecord as exc:
            result.dead.append(_dead(name, entity_id, None, exc))
    return projected


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class _Context:
    """What every request of one resource's delivery shares."""

    name: str
    resource: Resource
    client: ReachClient
    last_sent: LastSentStore
    gate: TenantGate
    outstanding: Outstanding
    result: DeliveryResult
    on_accepted: OnAccepted
    on_sending: OnSending


async def _send_realtime(ctx: _Context, items: Sequence[Projected]) -> tuple[list[Sent], Attempt]:
    """Single synchronous writes of one tenant (announced by the caller), bounded concurrency.
    Returns what Reach accepted (each when Reach answered) or may have (unconfirmed) and how the
    attempt ended, so the caller can report and remember the accepted ones first. Once Reach
    refuses the tenant, the writes still queued are not sent."""
    slots = asyncio.Semaphore(REALTIME_CONCURRENCY)
    taken: list[Sent] = []
    errors: list[SyncError] = []
    settled: set[str] = set()
    refused = False

    async def send(item: Projected) -> None:
        nonlocal refused
        async with slots:
            if refused:
                return
            try:
                await ctx.client.upsert_one(
                    item.tenant,
                    ctx.resource.reach_schema,
                    item.record,
                    external_id=item.external_id,
                )
            except BadRecord as exc:
                ctx.result.dead.append(
                    _dead(ctx.name, item.external_id, item.tenant, exc, item.hash)
                )
                settled.add(item.external_id)
            except SyncError as exc:
                errors.append(exc)
                refused = refused or blocks_tenant(exc)
                if isinstance(exc, Retryable) and exc.ambiguous:
                    taken.append(Sent(item, _now_ms(), unconfirmed=True))
            else:
                taken.append(Sent(item, _now_ms()))
                settled.add(item.external_id)

    await asyncio.gather(*(send(item) for item in items))
    unsettled = [i.external_id for i in items if i.external_id not in settled]
    return taken, Attempt(first_error(errors), unsettled)


def _taken(by_id: Mapping[str, Projected], settlement: Settlement) -> list[Sent]:
    accepted, parked = settlement.accepted.items(), settlement.parked.items()
    return [
        *(Sent(by_id[i], s.at_ms, s.batch_id) for i, s in accepted),
        *(Sent(by_id[i], s.at_ms, s.batch_id, parked=True) for i, s in parked),
    ]


async def _send_batch(
    ctx: _Context, tenant: str, items: Sequence[Projected]
) -> tuple[list[Sent], Attempt]:
    """One tenant's records through the batch endpoint (announced by the caller): what its
    finished batches accepted or parked (with the batch of each), what went unconfirmed, and
    how the attempt ended."""
    by_id = {item.external_id: item for item in items}
    dead: set[str] = set()

    def failed(external_id: str, refusal: Refusal) -> None:
        error = refusal.error(external_id)
        ctx.result.dead.append(_dead(ctx.name, external_id, tenant, error, by_id[external_id].hash))
        dead.add(external_id)

    async def kept(settlement: Settlement) -> None:
        await ctx.on_accepted(_taken(by_id, settlement), ())

    records = {i.external_id: i.record for i in items}
    submission = await ctx.client.upsert_batch(tenant, ctx.resource.reach_schema, records)
    settlement = await settle(
        ctx.client,
        ctx.outstanding,
        ctx.name,
        ctx.resource.reach_schema,
        tenant,
        submission,
        UPSERT_BATCH_TYPE,
        failed,
        kept,
    )
    now_ms = _now_ms()
    taken = [
        *_taken(by_id, settlement),
        *(Sent(by_id[i], now_ms, unconfirmed=True, in_batch=True) for i in submission.in_doubt),
    ]
    if settlement.error is not None:
        done = dead | settlement.accepted.keys() | settlement.parked.keys()
        return taken, Attempt(settlement.error, [k for k in by_id if k not in done])
    return taken, Attempt()


async def deliver_resource(
    name: str,
    resource: Resource,
    recomputed: Recomputed,
    *,
    client: ReachClient,
    last_sent: LastSentStore,
    tenants: TenantSource,
    gate: TenantGate | None = None,
    on_accepted: OnAccepted = _nobody,
    on_sending: OnSending = _unannounced,
    outstanding: Outstanding | None = None,
) -> DeliveryResult:
    """Project, skip what Reach already has, put the rest in doubt and send it, delete what is
    gone; tell ``on_sending`` what each request carries before it is made, and ``on_accepted``
    what Reach took before remembering it (module docstring). ``outstanding`` is the process's
    record of batches earlier attempts could not follow."""
    result = DeliveryResult()
    ctx = _Context(
        name,
        resource,
        client,
        last_sent,
        AlwaysOpen() if gate is None else gate,
        Outstanding() if outstanding is None else outstanding,
        result,
        on_accepted,
        on_sending,
    )
    projected = _project_all(name, resource, recomputed, result)
    ids: list[EntityId] = [p.external_id for p in projected]
    ids += [str(i) for i in recomputed.gone]
    to_send: list[Projected] = []
    moved: dict[str, list[str]] = defaultdict(list)  # old tenant -> ids that changed tenant
    with stage_span("dedup", name, {"reach_sync.records": len(projected)}) as span:
        known = await last_sent.get_many(name, ids)
        for item in projected:
            previous = None if known is None else known.get(item.external_id)
            if previous == LastSent(item.tenant, item.hash):
                result.skipped += 1
                continue
            if previous is not None and previous.tenant != item.tenant:
                moved[previous.tenant].append(item.external_id)
            to_send.append(item)
        # Whatever goes out may change what Reach holds: those entries claim nothing from now.
        # With the store away, that is owed until it answers again (dedup.py).
        doubt = [*(i.external_id for i in to_send), *recomputed.gone]
        await last_sent.put_in_doubt(name, doubt, required=known is not None)
        span.set_attributes(
            {"reach_sync.skipped": result.skipped, "reach_sync.dedup_available": known is not None}
        )

    # Upserts and deletes concern different entities (or, for an entity that moved, different
    # tenants), so they go at once; the first failure is raised after both finished.
    deleted: dict[str, set[str]] = defaultdict(set)  # tenant -> ids Reach deleted there
    work = {"reach_sync.records": len(to_send), "reach_sync.gone": len(recomputed.gone)}
    # Entities Reach has no state of (none remembered): with `new: realtime`, sent one by one.
    fresh = (
        set() if known is None else {i.external_id for i in to_send if i.external_id not in known}
    )
    with stage_span("deliver", name, work) as span:
        outcomes = await asyncio.gather(
            _upserts(ctx, to_send, fresh),
            _deletes(ctx, recomputed.gone, known, moved, tenants, deleted),
            return_exceptions=True,
        )
        await _keep_moved(name, moved, deleted, last_sent)
        span.set_attributes(_outcome_attributes(result))
        _raise_first(outcomes)
    return result


def _outcome_attributes(result: DeliveryResult) -> dict[str, int]:
    """What a deliver span says it came to: counts only."""
    return {
        "reach_sync.sent": result.sent,
        "reach_sync.parked": result.parked,
        "reach_sync.deleted": result.deleted,
        "reach_sync.dead_lettered": len(result.dead),
        "reach_sync.held": sum(len(h.ids) for h in result.held),
    }


async def _keep_moved(
    name: str, moved: dict[str, list[str]], deleted: dict[str, set[str]], last_sent: LastSentStore
) -> None:
    """An entity that moved to another tenant but is not yet deleted from its old one (that
    delete failed or is held) is remembered under the old tenant with no hash, so the next
    attempt sees it move again and deletes it there; remembering the new tenant, as the upsert
    just did, would skip it as unchanged and leave the old tenant's copy behind for good."""
    stranded = [(i, LastSent(old, "")) for old, ids in moved.items() for i in ids]
    await last_sent.record_sent(name, [(i, e) for i, e in stranded if i not in deleted[e.tenant]])


def _raise_first(outcomes: Sequence[object]) -> None:
    """Raise the first exception among gathered outcomes (errors before cancellations)."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    errors.sort(key=lambda e: isinstance(e, asyncio.CancelledError))
    if errors:
        raise errors[0]


async def _per_tenant(
    ctx: _Context,
    targets: Mapping[str, list[str]],
    send: Callable[[str, list[str]], Awaitable[Attempt]],
) -> None:
    """Each tenant's keys through its gate, tenants at once. Every tenant's sends finish before
    this returns (none outlives the attempt); then the first failure is raised. Before a
    tenant's first request, what earlier attempts left unfollowed for it is followed."""

    async def one_tenant(tenant: str, keys: list[str]) -> SyncError | None:
        async def attempt(chosen: list[str]) -> Attempt:
            try:
                await ctx.outstanding.settle(ctx.name, tenant, ctx.client)
            except SyncError as exc:
                return Attempt(exc, chosen)
            return await send(tenant, chosen)

        return await through_gate(
            ctx.gate, tenant, keys, attempt, functools.partial(ctx.result.hold, ctx.name)
        )

    outcomes = await asyncio.gather(
        *(one_tenant(t, keys) for t, keys in targets.items()), return_exceptions=True
    )
    _raise_first(outcomes)  # a returned SyncError is raised like one raised


async def _upserts(ctx: _Context, to_send: list[Projected], fresh: set[str]) -> None:
    """Send per tenant, tenants at once; report and remember what Reach accepted even when a
    part fails, then raise the first failure (after every tenant finished). ``fresh``: the
    entities Reach has no state of, sent one by one under ``delivery.new: realtime``."""
    by_tenant: dict[str, dict[str, Projected]] = defaultdict(dict)
    for item in to_send:
        by_tenant[item.tenant][item.external_id] = item

    async def send(tenant: str, keys: list[str]) -> Attempt:
        chosen = [by_tenant[tenant][k] for k in keys]
        delivery = ctx.resource.delivery
        new = [i for i in chosen if i.external_id in fresh] if delivery.new == "realtime" else []
        if len(new) > delivery.batch_over:  # a burst of new ones (a backfill): a batch is cheaper
            new = []

        def batched(items: Sequence[Projected]) -> bool:
            return not (delivery.mode == "realtime" and len(items) <= delivery.batch_over)

        # Which requests go, each as single writes or through the batch endpoint. New and known
        # entities are different entities: both requests go at once.
        if new and len(new) < len(chosen):
            known = [i for i in chosen if i.external_id not in fresh]
            requests = [(new, False), (known, batched(known))]
        elif new:
            requests = [(chosen, False)]
        else:
            requests = [(chosen, batched(chosen))]
        # What they carry is announced together (one audit flush) before any of them is made.
        at_ms = _now_ms()
        leaving = [Sending(i, at_ms, in_batch) for items, in_batch in requests for i in items]
        unannounced = await _announce(ctx.on_sending, leaving, ())
        if unannounced is not None:  # not durable: nothing is sent, the window retries
            return Attempt(unannounced, keys)
        sends = [
            _send_batch(ctx, tenant, items) if in_batch else _send_realtime(ctx, items)
            for items, in_batch in requests
        ]
        outcomes = [await sends[0]] if len(sends) == 1 else await asyncio.gather(*sends)
        taken = [s for one, _ in outcomes for s in one]
        attempt = functools.reduce(_both, (a for _, a in outcomes))
        unreported = await _report(ctx.on_accepted, taken, ())
        if unreported is not None:  # not durable: not remembered, the window retries
            return Attempt(unreported, attempt.unsettled)
        accepted = [s.projected for s in taken if not (s.parked or s.unconfirmed)]
        await ctx.last_sent.record_sent(
            ctx.name, [(i.external_id, LastSent(i.tenant, i.hash)) for i in accepted]
        )
        ctx.result.sent += len(accepted)
        ctx.result.parked += sum(s.parked for s in taken)
        return attempt

    await _per_tenant(ctx, {t: list(items) for t, items in by_tenant.items()}, send)


def _both(first: Attempt, second: Attempt) -> Attempt:
    """Two requests of one tenant's attempt, as one: the first error, every unsettled key."""
    return Attempt(first.error or second.error, [*first.unsettled, *second.unsettled])


async def _announce(
    on_sending: OnSending, sending: Sequence[Sending], deleting: Sequence[Deleting]
) -> SyncError | None:
    """Tell ``on_sending`` what a request is about to carry; its failure is returned, to end the
    attempt before anything is sent (like ``_report``)."""
    if not sending and not deleting:
        return None
    try:
        await on_sending(sending, deleting)
    except SyncError as exc:
        return exc
    return None


async def _report(
    on_accepted: OnAccepted, sent: Sequence[Sent], removed: Sequence[Removed]
) -> SyncError | None:
    """Tell ``on_accepted`` what Reach took; its failure is returned, to end the attempt (a
    tenant's sends end in an error, they never raise: see ``_through_gate``)."""
    if not sent and not removed:
        return None
    try:
        await on_accepted(sent, removed)
    except SyncError as exc:
        return exc
    return None


def _delete_targets(
    ctx: _Context,
    gone: Sequence[EntityId],
    known: dict[str, LastSent] | None,
    moved: dict[str, list[str]],
    tenants: list[str],
) -> dict[str, list[str]]:
    """Which tenant each gone (or moved-away) entity must be deleted from: the one the last-sent
    store names, else every tenant of ``tenants_query`` (``tenants``); with neither, the entity
    is dead-lettered, since no tenant can be named."""
    targets: dict[str, list[str]] = defaultdict(list, {t: list(ids) for t, ids in moved.items()})
    unknown: list[str] = []
    for entity_id in map(str, gone):
        previous = None if known is None else known.get(entity_id)
        if previous is not None:
            targets[previous.tenant].append(entity_id)
        else:
            unknown.append(entity_id)
    if unknown and ctx.resource.tenants_query is None:
        reason = (
            "deleted at the source, but its tenant is unknown"
            " (no last-sent entry and no tenants_query)"
        )
        ctx.result.dead.extend(_dead(ctx.name, i, None, BadRecord(reason)) for i in unknown)
    elif unknown:
        for tenant in tenants:
            targets[tenant].extend(unknown)
    return targets


async def _deletes(
    ctx: _Context,
    gone: Sequence[EntityId],
    known: dict[str, LastSent] | None,
    moved: dict[str, list[str]],
    tenants: TenantSource,
    deleted: dict[str, set[str]],
) -> None:
    """Delete what is gone (and what moved away) from each tenant that has it, tenants at
    once; ``deleted`` receives what each tenant deleted (and ``on_accepted`` was told)."""
    unknown = any(known is None or str(g) not in known for g in gone)
    listed = await tenants.tenants(ctx.resource) if unknown else []
    targets = _delete_targets(ctx, gone, known, moved, listed)

    async def send(tenant: str, keys: list[str]) -> Attempt:
        dead: set[str] = set()

        def failed(external_id: str, refusal: Refusal) -> None:
            error = refusal.error(external_id, prefix="delete refused: ")
            ctx.result.dead.append(_dead(ctx.name, external_id, tenant, error))
            dead.add(external_id)

        def removed(settlement: Settlement) -> list[Removed]:
            return [Removed(tenant, i, s.at_ms, s.batch_id) for i, s in settlement.accepted.items()]

        async def kept(settlement: Settlement) -> None:
            await ctx.on_accepted((), removed(settlement))

        schema = ctx.resource.reach_schema
        announced_ms = _now_ms()
        leaving = [Deleting(tenant, k, announced_ms) for k in keys]
        unannounced = await _announce(ctx.on_sending, (), leaving)
        if unannounced is not None:  # not durable: nothing is deleted, the window retries
            return Attempt(unannounced, keys)
        submission = await ctx.client.delete_batch(tenant, schema, keys)
        settlement = await settle(
            ctx.client,
            ctx.outstanding,
            ctx.name,
            ctx.resource.reach_schema,
            tenant,
            submission,
            DELETE_BATCH_TYPE,
            failed,
            kept,
        )
        now_ms = _now_ms()
        unconfirmed = [Removed(tenant, i, now_ms, None, True) for i in submission.in_doubt]
        unreported = await _report(ctx.on_accepted, (), [*removed(settlement), *unconfirmed])
        if unreported is not None:  # not durable: not forgotten, the window retries
            return Attempt(unreported, [k for k in keys if k not in dead])
        deleted[tenant].update(settlement.accepted)
        if settlement.error is None:
            return Attempt()
        done = dead | settlement.accepted.keys()
        return Attempt(settlement.error, [k for k in keys if k not in done])

    try:
        await _per_tenant(ctx, targets, send)
    finally:
        # What was deleted is forgotten even when another tenant's delete failed; an entity
        # held for one tenant is not deleted yet, whatever the others did.
        held = {i for h in ctx.result.held if h.resource == ctx.name for i in h.ids}
        done = set().union(*deleted.values()) - held
        gone_done = [g for g in map(str, gone) if g in done]
        await ctx.last_sent.forget(ctx.name, gone_done)
        ctx.result.deleted += len(gone_done)
