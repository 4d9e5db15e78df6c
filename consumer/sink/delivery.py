"""Delivery of one resource's share of a window: projected records and deletes, to durable outcomes.

Every entity of the window ends in exactly one outcome: sent (Reach accepted it), skipped (Reach
already has this exact state), deleted, dead-lettered (it can never be accepted as it is), or
held (Reach refuses its tenant for now, 401/403: the syncer keeps it, uncommitted, and tries it
again once a probe finds the tenant accepted; blocks.py). Before a tenant's records go, the
tenant gate says whether they may (blocks.py): a blocked tenant's records are held without a
request, and only its one probe goes. Anything else raises (Retryable, or a ConfigurationError
that concerns every tenant) and the whole window is retried later: re-sending full-state
records is harmless.

What Reach took (accepted or parked records, finished deletes) is reported to the caller's
``on_accepted`` before it is remembered in the last-sent store (or forgotten there, for a
delete): the syncer audits it there and waits until the audit topic has it, so a send can never
be remembered, and skipped as unchanged on a retry, without its audit record. A failing
``on_accepted`` fails the window like any retryable error; nothing of that request is remembered.

Before anything is sent, the entities about to go have their last-sent entries put in doubt
(dedup.py): a send whose outcome is never learned (a 5xx after Reach applied it, a batch whose
status cannot be read) then cannot leave an entry claiming a state Reach may no longer hold.
Such a send is reported to ``on_accepted`` as *unconfirmed* (audited: the record left), never
remembered.

Batches are followed until Reach finished them before this returns (follow.py); what an attempt
could not follow is kept, and followed first by the next send of that resource to that tenant.
Together with one window in flight per dirty-topic partition (and each entity owned by one
partition) this keeps "at most one unfinished Reach batch per entity", without which a slow
batch could overwrite a newer state (docs/design.md, "Reach specifics"). Every tenant's sends
end before this returns, whatever happened to the others: none outlives the window attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from consumer.config import Resource
from consumer.errors import BadRecord, ConfigurationError, Retryable, SyncError
from consumer.observe.spans import stage_span
from consumer.reach.batching import BatchSubmission
from consumer.reach.client import DELETE_BATCH_TYPE, UPSERT_BATCH_TYPE, ReachClient
from consumer.reach.status import BatchState
from consumer.router.dirty import EntityId
from consumer.sink.dedup import LastSent, LastSentStore
from consumer.sink.follow import Followed, Outstanding, follow
from consumer.sink.projection import Projected, project
from consumer.sink.recompute import Recomputed
from consumer.sink.tenant_gate import OPEN, Admission, Closed, blocks_tenant

__all__ = [
    "DeadLetter",
    "DeliveryResult",
    "Held",
    "OnAccepted",
    "Removed",
    "Sent",
    "TenantGate",
    "deliver_resource",
]

log = logging.getLogger(__name__)

# Real-time mode sends single records concurrently, this many at a time per window (the client
# bounds the total across windows: destination.max_connections).
REALTIME_CONCURRENCY = 16
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


@dataclass(frozen=True, slots=True)
class Held:
    """Entities of one resource and tenant that Reach refuses for now (``error``, a 401/403):
    neither sent nor dead-lettered; the syncer keeps them until the tenant is accepted again."""

    resource: str
    tenant: str
    ids: tuple[str, ...]
    error: ConfigurationError


@dataclass(frozen=True, slots=True)
class Sent:
    """One record Reach took: ``projected`` as sent, when (epoch ms: Reach answered the single
    write, or its batch was seen finished), the batch it was in (None: a single write), and
    whether Reach parked it on a missing ``$ref`` (accepted, but sent again next time).
    ``unconfirmed``: it was sent and the answer was lost, so Reach may or may not have it
    (``in_batch``: it went through the batch endpoint, whose id the lost answer carried)."""

    projected: Projected
    at_ms: int
    batch_id: str | None = None
    parked: bool = False
    unconfirmed: bool = False
    in_batch: bool = False


@dataclass(frozen=True, slots=True)
class Removed:
    """One entity Reach deleted from ``tenant``: when its batch was seen finished, and which;
    ``unconfirmed`` (no batch id): the delete was sent and its answer was lost."""

    tenant: str
    external_id: str
    at_ms: int
    batch_id: str | None
    unconfirmed: bool = False


# Told what Reach took, before it is remembered; raises (Retryable) when that cannot be made
# durable, which fails the window. Called once per request (one tenant's records or deletes).
OnAccepted = Callable[[Sequence[Sent], Sequence[Removed]], Awaitable[None]]


async def _nobody(sent: Sequence[Sent], removed: Sequence[Removed]) -> None:
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


class TenantGate(Protocol):
    """Whether a tenant's records may go now, and what became of those that went
    (``blocks.TenantBlocks``)."""

    def admit(self, tenant: str) -> Admission | Closed: ...

    def report(self, tenant: str, admission: Admission, error: SyncError | None) -> None: ...


class _AlwaysOpen:
    """The gate of a caller that keeps no blocks: every tenant may always send."""

    def admit(self, tenant: str) -> Admission | Closed:
        return OPEN

    def report(self, tenant: str, admission: Admission, error: SyncError | None) -> None:
        return None


@dataclass(slots=True)
class _Attempt:
    """How one tenant's request(s) ended: the error that stopped them (None: every record
    reached an outcome), and the keys that reached none (neither accepted nor dead-lettered)."""

    error: SyncError | None = None
    unsettled: list[str] = field(default_factory=list)


# What the gate hears about a request that never finished (cancelled): nothing was learned.
_INTERRUPTED = Retryable("the request was interrupted")


async def _through_gate(
    gate: TenantGate,
    tenant: str,
    keys: list[str],
    send: Callable[[list[str]], Awaitable[_Attempt]],
    result: DeliveryResult,
    name: str,
) -> SyncError | None:
    """Send one tenant's ``keys`` as its gate allows: all of them (open), none (closed), or
    one (the probe), the rest following once Reach took it. What a refusal of the tenant stops
    is held; any other error is returned, for the window to retry."""
    admission = gate.admit(tenant)
    if isinstance(admission, Closed):
        result.hold(name, tenant, keys, admission.error)
        return None
    now, later = (keys[:1], keys[1:]) if admission.probe else (keys, [])
    try:
        attempt = await send(now)
    except BaseException:
        gate.report(tenant, admission, _INTERRUPTED)
        raise
    gate.report(tenant, admission, attempt.error)
    if blocks_tenant(attempt.error):
        result.hold(name, tenant, [*attempt.unsettled, *later], attempt.error)
        return None
    if attempt.error is not None or not later:
        return attempt.error
    return await _through_gate(gate, tenant, later, send, result, name)


def _first_error(errors: Sequence[SyncError]) -> SyncError | None:
    """The error that decides a tenant's outcome: a refusal of the tenant, else the first."""
    return next((e for e in errors if blocks_tenant(e)), errors[0] if errors else None)


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


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class _Settled:
    """Where a record of a finished batch was: the batch, and when it was seen finished."""

    batch_id: str
    at_ms: int


@dataclass(slots=True)
class _Settlement:
    """What a submission's finished batches say, by external id: accepted, parked (accepted,
    held by Reach for a missing $ref); and the error that stopped the rest (None: none did)."""

    accepted: dict[str, _Settled] = field(default_factory=dict)
    parked: dict[str, _Settled] = field(default_factory=dict)
    error: SyncError | None = None


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why Reach refused one record: its reason and code, and its HTTP answer when it refused
    synchronously (a batch status's per-record failure has no status; its body is the entry)."""

    reason: str
    code: str | None = None
    status: int | None = None
    body: str | None = None

    def error(self, external_id: str, prefix: str = "") -> BadRecord:
        message = self.reason if self.code is None else f"{self.code}: {self.reason}"
        return BadRecord(
            prefix + message, status=self.status, body=self.body, external_id=external_id
        )


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


def _read_settlement(
    submission: BatchSubmission, followed: Followed, on_failed: Callable[[str, _Refusal], None]
) -> _Settlement:
    """Which records of a submission's finished batches were accepted or parked; refused and
    failed ones go to ``on_failed(id, refusal)``. A submission that stopped early, or a batch
    whose failures Reach did not attribute, ends in ``error``, beside what was accepted."""
    settlement = _Settlement()
    uncertain: list[str] = []
    _report_rejected(submission, on_failed)
    for batch in submission.batches:
        status = followed.statuses[batch.batch_id]
        settled = _Settled(batch.batch_id, followed.finished_at[batch.batch_id])
        failed = {f.external_id: f for f in status.failures if f.external_id is not None}
        for external_id in batch.external_ids:
            failure = failed.get(external_id)
            if failure is not None:
                if failure.code != SUPERSEDED:
                    entry = orjson.dumps({"code": failure.code, "message": failure.reason})
                    on_failed(
                        external_id, _Refusal(failure.reason, failure.code, None, entry.decode())
                    )
            elif status.unattributed_failures or status.state is BatchState.FAILED:
                # Reach says records failed but not which: neither sent nor dead, try again.
                uncertain.append(batch.batch_id)
            elif external_id in status.pending_external_ids:
                settlement.parked[external_id] = settled
            else:
                settlement.accepted[external_id] = settled
    settlement.error = submission.error
    if settlement.error is None and uncertain:
        batches = ", ".join(sorted(set(uncertain)))
        settlement.error = Retryable(
            f"Reach reported failures it did not attribute to records (batches {batches})"
        )
    return settlement


def _report_rejected(
    submission: BatchSubmission, on_failed: Callable[[str, _Refusal], None]
) -> None:
    """The records Reach refused synchronously, each with its answer."""
    for rejected in submission.rejected:
        refusal = _Refusal(rejected.reason, None, rejected.status, rejected.body)
        on_failed(rejected.external_id, refusal)


def _ignore(external_id: str, refusal: _Refusal) -> None:
    return None


async def _settle(
    ctx: _Context,
    tenant: str,
    submission: BatchSubmission,
    batch_type: str,
    on_failed: Callable[[str, _Refusal], None],
    on_kept: Callable[[_Settlement], Awaitable[None]],
) -> _Settlement:
    """Follow a submission's batches to their end and say what they did (``_read_settlement``).
    What cannot be followed now is kept (follow.py), with ``on_kept`` to hear what it did once it
    finished; so is a lost answer, which may stand for a batch nobody knows the id of."""
    if submission.in_doubt:
        ctx.outstanding.keep_lost(ctx.name, tenant, ctx.resource.reach_schema, batch_type)
    ids = [b.batch_id for b in submission.batches]
    try:
        followed = await follow(ctx.client, tenant, ids, bound_s=ctx.outstanding.follow_bound_s)
    except BaseException as exc:

        async def finished(later: Followed) -> None:
            await on_kept(_read_settlement(submission, later, _ignore))

        ctx.outstanding.keep_batches(ctx.name, tenant, ids, finished)
        if not isinstance(exc, SyncError):
            raise
        _report_rejected(submission, on_failed)
        return _Settlement(error=exc)
    return _read_settlement(submission, followed, on_failed)


async def _send_realtime(ctx: _Context, items: Sequence[Projected]) -> tuple[list[Sent], _Attempt]:
    """Single synchronous writes of one tenant, bounded concurrency. Returns what Reach accepted
    (each when Reach answered) or may have (unconfirmed) and how the attempt ended, so the
    caller can report and remember the accepted ones first. Once Reach refuses the tenant, the
    writes still queued are not sent."""
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
    return taken, _Attempt(_first_error(errors), unsettled)


def _taken(by_id: Mapping[str, Projected], settlement: _Settlement) -> list[Sent]:
    accepted, parked = settlement.accepted.items(), settlement.parked.items()
    return [
        *(Sent(by_id[i], s.at_ms, s.batch_id) for i, s in accepted),
        *(Sent(by_id[i], s.at_ms, s.batch_id, parked=True) for i, s in parked),
    ]


async def _send_batch(
    ctx: _Context, tenant: str, items: Sequence[Projected]
) -> tuple[list[Sent], _Attempt]:
    """One tenant's records through the batch endpoint: what its finished batches accepted or
    parked (with the batch of each), what went unconfirmed, and how the attempt ended."""
    by_id = {item.external_id: item for item in items}
    dead: set[str] = set()

    def failed(external_id: str, refusal: _Refusal) -> None:
        error = refusal.error(external_id)
        ctx.result.dead.append(_dead(ctx.name, external_id, tenant, error, by_id[external_id].hash))
        dead.add(external_id)

    async def kept(settlement: _Settlement) -> None:
        await ctx.on_accepted(_taken(by_id, settlement), ())

    records = {i.external_id: i.record for i in items}
    submission = await ctx.client.upsert_batch(tenant, ctx.resource.reach_schema, records)
    settlement = await _settle(ctx, tenant, submission, UPSERT_BATCH_TYPE, failed, kept)
    now_ms = _now_ms()
    taken = [
        *_taken(by_id, settlement),
        *(Sent(by_id[i], now_ms, unconfirmed=True, in_batch=True) for i in submission.in_doubt),
    ]
    if settlement.error is not None:
        done = dead | settlement.accepted.keys() | settlement.parked.keys()
        return taken, _Attempt(settlement.error, [k for k in by_id if k not in done])
    return taken, _Attempt()


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
    outstanding: Outstanding | None = None,
) -> DeliveryResult:
    """Project, skip what Reach already has, put the rest in doubt and send it, delete what is
    gone; tell ``on_accepted`` what Reach took before remembering it (module docstring).
    ``outstanding`` is the process's record of batches earlier attempts could not follow."""
    result = DeliveryResult()
    ctx = _Context(
        name,
        resource,
        client,
        last_sent,
        _AlwaysOpen() if gate is None else gate,
        Outstanding() if outstanding is None else outstanding,
        result,
        on_accepted,
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
    with stage_span("deliver", name, work) as span:
        outcomes = await asyncio.gather(
            _upserts(ctx, to_send),
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
    send: Callable[[str, list[str]], Awaitable[_Attempt]],
) -> None:
    """Each tenant's keys through its gate, tenants at once. Every tenant's sends finish before
    this returns (none outlives the attempt); then the first failure is raised. Before a
    tenant's first request, what earlier attempts left unfollowed for it is followed."""

    async def one_tenant(tenant: str, keys: list[str]) -> SyncError | None:
        async def attempt(chosen: list[str]) -> _Attempt:
            try:
                await ctx.outstanding.settle(ctx.name, tenant, ctx.client)
            except SyncError as exc:
                return _Attempt(exc, chosen)
            return await send(tenant, chosen)

        return await _through_gate(ctx.gate, tenant, keys, attempt, ctx.result, ctx.name)

    outcomes = await asyncio.gather(
        *(one_tenant(t, keys) for t, keys in targets.items()), return_exceptions=True
    )
    _raise_first(outcomes)  # a returned SyncError is raised like one raised


async def _upserts(ctx: _Context, to_send: list[Projected]) -> None:
    """Send per tenant, tenants at once; report and remember what Reach accepted even when a
    part fails, then raise the first failure (after every tenant finished)."""
    by_tenant: dict[str, dict[str, Projected]] = defaultdict(dict)
    for item in to_send:
        by_tenant[item.tenant][item.external_id] = item

    async def send(tenant: str, keys: list[str]) -> _Attempt:
        chosen = [by_tenant[tenant][k] for k in keys]
        delivery = ctx.resource.delivery
        if delivery.mode == "realtime" and len(chosen) <= delivery.batch_over:
            taken, attempt = await _send_realtime(ctx, chosen)
        else:
            taken, attempt = await _send_batch(ctx, tenant, chosen)
        unreported = await _report(ctx.on_accepted, taken, ())
        if unreported is not None:  # not durable: not remembered, the window retries
            return _Attempt(unreported, attempt.unsettled)
        accepted = [s.projected for s in taken if not (s.parked or s.unconfirmed)]
        await ctx.last_sent.record_sent(
            ctx.name, [(i.external_id, LastSent(i.tenant, i.hash)) for i in accepted]
        )
        ctx.result.sent += len(accepted)
        ctx.result.parked += sum(s.parked for s in taken)
        return attempt

    await _per_tenant(ctx, {t: list(items) for t, items in by_tenant.items()}, send)


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

    async def send(tenant: str, keys: list[str]) -> _Attempt:
        dead: set[str] = set()

        def failed(external_id: str, refusal: _Refusal) -> None:
            error = refusal.error(external_id, prefix="delete refused: ")
            ctx.result.dead.append(_dead(ctx.name, external_id, tenant, error))
            dead.add(external_id)

        def removed(settlement: _Settlement) -> list[Removed]:
            return [Removed(tenant, i, s.at_ms, s.batch_id) for i, s in settlement.accepted.items()]

        async def kept(settlement: _Settlement) -> None:
            await ctx.on_accepted((), removed(settlement))

        schema = ctx.resource.reach_schema
        submission = await ctx.client.delete_batch(tenant, schema, keys)
        settlement = await _settle(ctx, tenant, submission, DELETE_BATCH_TYPE, failed, kept)
        now_ms = _now_ms()
        unconfirmed = [Removed(tenant, i, now_ms, None, True) for i in submission.in_doubt]
        unreported = await _report(ctx.on_accepted, (), [*removed(settlement), *unconfirmed])
        if unreported is not None:  # not durable: not forgotten, the window retries
            return _Attempt(unreported, [k for k in keys if k not in dead])
        deleted[tenant].update(settlement.accepted)
        if settlement.error is None:
            return _Attempt()
        done = dead | settlement.accepted.keys()
        return _Attempt(settlement.error, [k for k in keys if k not in done])

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
