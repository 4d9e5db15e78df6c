"""What Reach's finished batches say about each record: accepted, parked, refused, or unknown.

``settle`` follows a submission's batches to their end (follow.py) and reads their statuses;
what cannot be followed now is kept in ``Outstanding`` with a callback for when it finished.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from consumer.errors import BadRecord, Retryable, SyncError
from consumer.reach.batching import BatchSubmission
from consumer.reach.client import ReachClient
from consumer.reach.status import BatchState
from consumer.sink.follow import Followed, Outstanding, follow

__all__ = [
    "SUPERSEDED",
    "Refusal",
    "Settled",
    "Settlement",
    "ignore_refusal",
    "read_settlement",
    "report_rejected",
    "settle",
]

# A record failure Reach reports because a later write of the same resource replaced it: that
# later write is ours and carries a newer state, so the record is not dead.
SUPERSEDED = "SUPERSEDED"


@dataclass(frozen=True, slots=True)
class Settled:
    """Where a record of a finished batch was: the batch, and when it was seen finished."""

    batch_id: str
    at_ms: int


@dataclass(slots=True)
class Settlement:
    """What a submission's finished batches say, by external id: accepted, parked (accepted,
    held by Reach for a missing $ref); and the error that stopped the rest (None: none did)."""

    accepted: dict[str, Settled] = field(default_factory=dict)
    parked: dict[str, Settled] = field(default_factory=dict)
    error: SyncError | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
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


def read_settlement(
    submission: BatchSubmission, followed: Followed, on_failed: Callable[[str, Refusal], None]
) -> Settlement:
    """Which records of a submission's finished batches were accepted or parked; refused and
    failed ones go to ``on_failed(id, refusal)``. A submission that stopped early, or a batch
    whose failures Reach did not attribute, ends in ``error``, beside what was accepted."""
    settlement = Settlement()
    uncertain: list[str] = []
    report_rejected(submission, on_failed)
    for batch in submission.batches:
        status = followed.statuses[batch.batch_id]
        settled = Settled(batch.batch_id, followed.finished_at[batch.batch_id])
        failed = {f.external_id: f for f in status.failures if f.external_id is not None}
        for external_id in batch.external_ids:
            failure = failed.get(external_id)
            if failure is not None:
                if failure.code != SUPERSEDED:
                    entry = orjson.dumps({"code": failure.code, "message": failure.reason})
                    on_failed(
                        external_id, Refusal(failure.reason, failure.code, None, entry.decode())
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


def report_rejected(submission: BatchSubmission, on_failed: Callable[[str, Refusal], None]) -> None:
    """The records Reach refused synchronously, each with its answer."""
    for rejected in submission.rejected:
        refusal = Refusal(rejected.reason, None, rejected.status, rejected.body)
        on_failed(rejected.external_id, refusal)


def ignore_refusal(external_id: str, refusal: Refusal) -> None:
    return None


async def settle(
    client: ReachClient,
    outstanding: Outstanding,
    name: str,
    schema: str,
    tenant: str,
    submission: BatchSubmission,
    batch_type: str,
    on_failed: Callable[[str, Refusal], None],
    on_kept: Callable[[Settlement], Awaitable[None]],
) -> Settlement:
    """Follow a submission's batches to their end and say what they did (``read_settlement``).
    What cannot be followed now is kept (follow.py), with ``on_kept`` to hear what it did once it
    finished; so is a lost answer, which may stand for a batch nobody knows the id of."""
    if submission.in_doubt:
        outstanding.keep_lost(name, tenant, schema, batch_type)
    ids = [b.batch_id for b in submission.batches]
    try:
        followed = await follow(client, tenant, ids, bound_s=outstanding.follow_bound_s)
    except BaseException as exc:

        async def finished(later: Followed) -> None:
            await on_kept(read_settlement(submission, later, ignore_refusal))

        outstanding.keep_batches(name, tenant, ids, finished)
        if not isinstance(exc, SyncError):
            raise
        report_rejected(submission, on_failed)
        return Settlement(error=exc)
    return read_settlement(submission, followed, on_failed)
