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

Batches are waited on until Reach finished them before this returns. Together with one window in
flight per dirty-topic partition (and each entity owned by one partition) this is what keeps "at
most one unfinished Reach batch per entity", without which a slow batch could overwrite a newer
state (design.md, "Reach specifics").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from consumer.blocks import OPEN, Admission, Closed, blocks_tenant
from consumer.config import Resource
from consumer.dedup import LastSent, LastSentStore
from consumer.dirty import EntityId
from consumer.errors import BadRecord, ConfigurationError, Retryable, SyncError
from consumer.projection import Projected, project
from consumer.reach.batching import BatchSubmission
from consumer.reach.client import ReachClient
from consumer.reach.status import BatchState, BatchStatus
from consumer.recompute import Recomputed
from consumer.spans import stage_span

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
    whether Reach parked it on a missing ``$ref`` (accepted, but sent again next time)."""

    projected: Projected
    at_ms: int
    batch_id: str | None = None
    parked: bool = False


@dataclass(frozen=True, slots=True)
class Removed:
    """One entity Reach deleted from ``tenant``: when its batch was seen finished, and which."""

    tenant: str
    external_id: str
    at_ms: int
    batch_id: str


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


async def _wait_finished(
    client: ReachClient, tenant: str, batch_ids: Sequence[str]
) -> tuple[dict[str, BatchStatus], dict[str, int]]:
    """Poll until every batch is finished; never gives up on its own (see module docstring).
    Returns each batch's final status and when it was seen finished (epoch ms)."""
    statuses: dict[str, BatchStatus] = {}
    finished_at: dict[str, int] = {}
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
        seen_ms = _now_ms()
        finished_at.update((b, seen_ms) for b in waiting if statuses[b].finished)
        waiting = [b for b in waiting if not statuses[b].finished]
        if waiting:
            log.warning(
                "%d Reach batches still unfinished after %.0f s; waiting on",
                len(waiting),
                WAIT_SLICE_S,
            )
    return statuses, finished_at


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


async def _settle(
    client: ReachClient,
    tenant: str,
    submission: BatchSubmission,
    on_failed: Callable[[str, _Refusal], None],
) -> _Settlement:
    """Wait for a submission's batches; say which records each finished batch accepted or
    parked. Records refused synchronously or failed in a batch go to ``on_failed(id,
    refusal)``. A submission that stopped early, or a batch whose failures Reach did not attribute,
    ends in ``error``, returned only after every batch it did send is finished (so a retry never
    overlaps a batch still running) and beside what those batches accepted (which Reach has)."""
    statuses, finished_at = await _wait_finished(
        client, tenant, [b.batch_id for b in submission.batches]
    )
    settlement = _Settlement()
    uncertain: list[str] = []
    for rejected in submission.rejected:
        refusal = _Refusal(rejected.reason, None, rejected.status, rejected.body)
        on_failed(rejected.external_id, refusal)
    for batch in submission.batches:
        status = statuses[batch.batch_id]
        settled = _Settled(batch.batch_id, finished_at[batch.batch_id])
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


async def _send_realtime(
    client: ReachClient, schema: str, items: Sequence[Projected], result: DeliveryResult, name: str
) -> tuple[list[Sent], _Attempt]:
    """Single synchronous writes of one tenant, bounded concurrency. Returns what Reach accepted
    (each when Reach answered) and how the attempt ended, so the caller can report and remember
    the accepted ones first. Once Reach refuses the tenant, the writes still queued are not
    sent."""
    slots = asyncio.Semaphore(REALTIME_CONCURRENCY)
    accepted: list[Sent] = []
    errors: list[SyncError] = []
    settled: set[str] = set()
    refused = False

    async def send(item: Projected) -> None:
        nonlocal refused
        async with slots:
            if refused:
                return
            try:
                await client.upsert_one(
                    item.tenant, schema, item.record, external_id=item.external_id
                )
            except BadRecord as exc:
                result.dead.append(_dead(name, item.external_id, item.tenant, exc, item.hash))
                settled.add(item.external_id)
            except SyncError as exc:
                errors.append(exc)
                refused = refused or blocks_tenant(exc)
            else:
                accepted.append(Sent(item, _now_ms()))
                settled.add(item.external_id)

    await asyncio.gather(*(send(item) for item in items))
    unsettled = [i.external_id for i in items if i.external_id not in settled]
    return accepted, _Attempt(_first_error(errors), unsettled)


async def _send_batch(
    client: ReachClient,
    schema: str,
    tenant: str,
    items: Sequence[Projected],
    result: DeliveryResult,
    name: str,
) -> tuple[list[Sent], _Attempt]:
    """One tenant's records through the batch endpoint: what its finished batches accepted or
    parked (with the batch of each), and how the attempt ended."""
    by_id = {item.external_id: item for item in items}
    dead: set[str] = set()

    def failed(external_id: str, refusal: _Refusal) -> None:
        error = refusal.error(external_id)
        result.dead.append(_dead(name, external_id, tenant, error, by_id[external_id].hash))
        dead.add(external_id)

    submission = await client.upsert_batch(tenant, schema, {i.external_id: i.record for i in items})
    settlement = await _settle(client, tenant, submission, failed)
    taken = [
        *(Sent(by_id[i], s.at_ms, s.batch_id) for i, s in settlement.accepted.items()),
        *(Sent(by_id[i], s.at_ms, s.batch_id, parked=True) for i, s in settlement.parked.items()),
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
) -> DeliveryResult:
    """Project, skip what Reach already has, send the rest, delete what is gone; tell
    ``on_accepted`` what Reach took before remembering it (module docstring)."""
    gate = _AlwaysOpen() if gate is None else gate
    result = DeliveryResult()
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
        span.set_attributes(
            {"reach_sync.skipped": result.skipped, "reach_sync.dedup_available": known is not None}
        )

    # Upserts and deletes concern different entities (or, for an entity that moved, different
    # tenants), so they go at once; the first failure is raised after both finished.
    deleted: dict[str, set[str]] = defaultdict(set)  # tenant -> ids Reach deleted there
    work = {"reach_sync.records": len(to_send), "reach_sync.gone": len(recomputed.gone)}
    with stage_span("deliver", name, work) as span:
        outcomes = await asyncio.gather(
            _upserts(name, resource, to_send, client, last_sent, gate, result, on_accepted),
            _deletes(
                name,
                resource,
                recomputed.gone,
                known,
                moved,
                client,
                last_sent,
                tenants,
                gate,
                result,
                deleted,
                on_accepted,
            ),
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


async def _upserts(
    name: str,
    resource: Resource,
    to_send: list[Projected],
    client: ReachClient,
    last_sent: LastSentStore,
    gate: TenantGate,
    result: DeliveryResult,
    on_accepted: OnAccepted,
) -> None:
    """Send per tenant, tenants at once; report and remember what Reach accepted even when a
    part fails, then raise the first failure (after every tenant finished)."""
    by_tenant: dict[str, dict[str, Projected]] = defaultdict(dict)
    for item in to_send:
        by_tenant[item.tenant][item.external_id] = item

    async def one_tenant(tenant: str, items: dict[str, Projected]) -> SyncError | None:
        async def send(keys: list[str]) -> _Attempt:
            chosen = [items[k] for k in keys]
            delivery = resource.delivery
            if delivery.mode == "realtime" and len(chosen) <= delivery.batch_over:
                taken, attempt = await _send_realtime(
                    client, resource.reach_schema, chosen, result, name
                )
            else:
                taken, attempt = await _send_batch(
                    client, resource.reach_schema, tenant, chosen, result, name
                )
            unreported = await _report(on_accepted, taken, ())
            if unreported is not None:  # not durable: not remembered, the window retries
                return _Attempt(unreported, attempt.unsettled)
            accepted = [s.projected for s in taken if not s.parked]
            await last_sent.record_sent(
                name, [(i.external_id, LastSent(i.tenant, i.hash)) for i in accepted]
            )
            result.sent += len(accepted)
            result.parked += len(taken) - len(accepted)
            return attempt

        return await _through_gate(gate, tenant, list(items), send, result, name)

    errors = await asyncio.gather(*(one_tenant(t, items) for t, items in by_tenant.items()))
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


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


async def _deletes(
    name: str,
    resource: Resource,
    gone: Sequence[EntityId],
    known: dict[str, LastSent] | None,
    moved: dict[str, list[str]],
    client: ReachClient,
    last_sent: LastSentStore,
    tenants: TenantSource,
    gate: TenantGate,
    result: DeliveryResult,
    deleted: dict[str, set[str]],
    on_accepted: OnAccepted,
) -> None:
    """Delete what is gone (and what moved away) from each tenant that has it, tenants at
    once; ``deleted`` receives what each tenant deleted (and ``on_accepted`` was told)."""
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

    async def one_tenant(tenant: str, ids: list[str]) -> SyncError | None:
        async def send(keys: list[str]) -> _Attempt:
            dead: set[str] = set()

            def failed(external_id: str, refusal: _Refusal) -> None:
                error = refusal.error(external_id, prefix="delete refused: ")
                result.dead.append(_dead(name, external_id, tenant, error))
                dead.add(external_id)

            submission = await client.delete_batch(tenant, resource.reach_schema, keys)
            settlement = await _settle(client, tenant, submission, failed)
            removed = [
                Removed(tenant, i, s.at_ms, s.batch_id) for i, s in settlement.accepted.items()
            ]
            unreported = await _report(on_accepted, (), removed)
            if unreported is not None:  # not durable: not forgotten, the window retries
                return _Attempt(unreported, [k for k in keys if k not in dead])
            deleted[tenant].update(settlement.accepted)
            if settlement.error is None:
                return _Attempt()
            done = dead | settlement.accepted.keys()
            return _Attempt(settlement.error, [k for k in keys if k not in done])

        return await _through_gate(gate, tenant, ids, send, result, name)

    outcomes = await asyncio.gather(
        *(one_tenant(t, ids) for t, ids in targets.items()), return_exceptions=True
    )
    # What was deleted is forgotten even when another tenant's delete failed; an entity held
    # for one tenant is not deleted yet, whatever the others did.
    held = {i for h in result.held if h.resource == name for i in h.ids}
    done = set().union(*deleted.values()) - held
    gone_done = [g for g in map(str, gone) if g in done]
    await last_sent.forget(name, gone_done)
    result.deleted += len(gone_done)
    _raise_first(outcomes)
