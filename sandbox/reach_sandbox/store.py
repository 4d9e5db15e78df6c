"""Every state change of the sandbox, one transaction each, run on the database thread.

This is where a write's consequences are settled in the same transaction as the write: parked
records whose dependencies it created are applied, parked records it superseded are failed, and
every batch whose counters moved is written back (``Ledger``). A batch is one transaction, so a
crash or an error never leaves it half-applied.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from reach_sandbox.batch_rows import (
    BatchJob,
    complete_unapplied,
    fail_batch,
    insert_batch,
    start_batch,
    unfinished_jobs,
)
from reach_sandbox.config import SandboxConfig
from reach_sandbox.db import RESET_TABLES, transaction
from reach_sandbox.deletes import DeleteRequest, DeleteResult, apply_deletes
from reach_sandbox.engine import (
    Code,
    Op,
    Outcome,
    WriteContext,
    WriteResult,
    apply_writes,
)
from reach_sandbox.ledger import Ledger
from reach_sandbox.payloads import PayloadStore
from reach_sandbox.pending import PendingRecord, PendingStore
from reach_sandbox.registry import Registry, load_registry
from reach_sandbox.writes import Stored, load_resources

__all__ = ["SingleDelete", "Store"]

_log = logging.getLogger(__name__)
_R = TypeVar("_R")

# "Later" in apply order, which is arrival order unless batches are shuffled (batches.py).
_SUPERSEDED = (
    "a later-applied write of this resource replaced it while it waited for its dependencies"
)


@dataclass(frozen=True, slots=True)
class SingleDelete:
    outcome: Outcome
    existed: Stored | None


class Store:
    """State operations; every public method takes the connection first (see ``Database.run``)."""

    def __init__(self, registry: Registry, payloads: PayloadStore) -> None:
        self.registry = registry
        self.payloads = payloads
        self.pending = PendingStore()

    def open(self, conn: sqlite3.Connection, config: SandboxConfig) -> list[BatchJob]:
        """Load tenants and schemas, and return the batches a previous run left unfinished."""
        with transaction(conn):
            load_registry(conn, self.registry, config)
        self.pending.load_count(conn)
        return unfinished_jobs(conn, self.registry, self.payloads)

    def reset(self, conn: sqlite3.Connection, config: SandboxConfig) -> None:
        """Forget everything except what the config seeds."""
        with transaction(conn):
            for table in RESET_TABLES:
                conn.execute(f"DELETE FROM {table}")
            load_registry(conn, self.registry, config)
        self.pending.count = 0
        self.payloads.keep_only(set())

    def write_one(
        self, conn: sqlite3.Connection, ctx: WriteContext, op: Op, now: float
    ) -> WriteResult:
        """A synchronous single-resource upsert or patch."""
        return self._guarded(conn, lambda ledger: self._writes(conn, ledger, ctx, [op], now), now)

    def delete_one(self, conn: sqlite3.Connection, req: DeleteRequest, now: float) -> SingleDelete:
        """A synchronous single-resource delete (never cascades)."""
        ext = (req.external_ids or [""])[0]
        before = load_resources(conn, req.tenant_id, req.schema_id, [ext]).get(ext)
        result = self._guarded(conn, lambda ledger: self._deletes(conn, ledger, req, now), now)
        return SingleDelete(result.outcomes[0], before)

    def plan_delete(self, conn: sqlite3.Connection, req: DeleteRequest, now: float) -> DeleteResult:
        """A dry run: the plan of ``apply_deletes`` with nothing written."""
        return apply_deletes(conn, req, self.pending, now)

    def process_batch(
        self,
        conn: sqlite3.Connection,
        job: BatchJob,
        inject: Callable[[str], str | None] | None,
        async_mode: bool,
        still_wanted: Callable[[], bool],
    ) -> None:
        """Apply a whole batch in one transaction; an unexpected error fails it, never half-way.

        ``still_wanted`` is asked on this thread right before the batch applies: a batch queued
        before an admin reset must not write into the state after it.
        """
        if not still_wanted():
            return
        now = time.time()

        def body(ledger: Ledger) -> None:
            if job.kind == "delete":
                result = self._deletes(conn, ledger, job.delete_request(), now)
                ledger.set_total(job.id, len(result.outcomes))
                ledger.record(job.id, result.outcomes)
            else:
                ctx = job.write_context(self.registry, inject, async_mode)
                ledger.set_total(job.id, len(job.ops))
                written = self._writes(conn, ledger, ctx, job.ops, now)
                ledger.record(job.id, written.outcomes)

        try:
            with transaction(conn):
                ledger = Ledger(conn)
                body(ledger)
                ledger.flush(now)
        except Exception:
            _log.exception("batch %s failed unexpectedly", job.id)
            self.pending.load_count(conn)
            fail_batch(conn, job.id, str(Code.INTERNAL), now)
        self.payloads.drop(job.id)

    def accept_batch(
        self, conn: sqlite3.Connection, job: BatchJob, payload: bytes, total: int, key: str | None
    ) -> str | None:
        """Keep an accepted batch (row and body); an earlier batch's id for a reused key."""
        self.payloads.save(job.id, payload)
        try:
            # No explicit transaction: the lookup and the insert are one writer's, in a row.
            earlier = insert_batch(conn, job, total, key)
        except BaseException:
            self.payloads.drop(job.id)
            raise
        if earlier is not None:
            self.payloads.drop(job.id)
        return earlier

    def accept_unapplied(
        self, conn: sqlite3.Connection, job: BatchJob, total: int, key: str | None, now: float
    ) -> str | None:
        """Sink mode: keep the batch row only, already a success of all ``total`` records (no
        body kept, nothing applied); an earlier batch's id for a reused key."""
        with transaction(conn):
            earlier = insert_batch(conn, job, total, key)
            if earlier is None:
                complete_unapplied(conn, job.id, now)
        return earlier

    def start(self, conn: sqlite3.Connection, batch_id: str, now: float) -> None:
        start_batch(conn, batch_id, now)

    def sweep(self, conn: sqlite3.Connection, now: float) -> int:
        """Fail parked records whose dependency wait expired; returns how many."""
        if self.pending.count == 0:
            return 0
        with transaction(conn):
            expired = self.pending.expired(conn, now)
            self.pending.remove(conn, [p.id for p in expired])
            ledger = Ledger(conn)
            for record in expired:
                ledger.resolve(record.batch_id, _expired(record))
            ledger.flush(now)
        return len(expired)

    def _guarded(self, conn: sqlite3.Connection, body: Callable[[Ledger], _R], now: float) -> _R:
        try:
            with transaction(conn):
                ledger = Ledger(conn)
                result = body(ledger)
                ledger.flush(now)
                return result
        except Exception:
            self.pending.load_count(conn)
            raise

    def _writes(
        self, conn: sqlite3.Connection, ledger: Ledger, ctx: WriteContext, ops: list[Op], now: float
    ) -> WriteResult:
        result = apply_writes(conn, ctx, ops, self.pending, now)
        self._settle(conn, ledger, ctx.tenant_id, result.created, result.superseded, now)
        return result

    def _deletes(
        self, conn: sqlite3.Connection, ledger: Ledger, req: DeleteRequest, now: float
    ) -> DeleteResult:
        result = apply_deletes(conn, req, self.pending, now)
        self._settle(conn, ledger, req.tenant_id, set(), result.superseded, now)
        return result

    def _settle(
        self,
        conn: sqlite3.Connection,
        ledger: Ledger,
        tenant_id: str,
        created: set[tuple[str, str]],
        superseded: list[PendingRecord],
        now: float,
    ) -> None:
        """Fail superseded parked records, then apply those whose dependencies now all exist."""
        for record in superseded:
            ledger.resolve(
                record.batch_id,
                Outcome(record.index, record.external_id, "failed", Code.SUPERSEDED, _SUPERSEDED),
            )
        frontier = created
        while frontier:
            released: set[tuple[str, str]] = set()
            for record in self.pending.waiting_on(conn, tenant_id, frontier):
                outcome, made = self._release(conn, record, now)
                if outcome is not None:
                    ledger.resolve(record.batch_id, outcome)
                    released |= made
            frontier = released

    def _release(
        self, conn: sqlite3.Connection, record: PendingRecord, now: float
    ) -> tuple[Outcome | None, set[tuple[str, str]]]:
        if record.expires_at <= now:
            return None, set()  # the sweep reports it
        still = tuple(dep for dep in record.missing if not _exists(conn, record.tenant_id, dep))
        if still:
            if still != record.missing:
                self.pending.set_missing(conn, record, still)
            return None, set()
        self.pending.remove(conn, [record.id])
        schema = self.registry.schemas.get(record.schema_id)
        if schema is None:
            return Outcome(
                record.index,
                record.external_id,
                "failed",
                Code.INTERNAL,
                "schema definition no longer exists",
            ), set()
        ctx = WriteContext(
            record.tenant_id,
            schema,
            record.arrived_at,
            record.onconflict,
            0,
            record.batch_id,
            record.request_id,
        )
        op = Op(
            record.index,
            record.external_id,
            "patch" if record.kind == "patch" else "upsert",
            record.data,
        )
        result = apply_writes(conn, ctx, [op], self.pending, now)
        return result.outcomes[0], result.created


def _exists(conn: sqlite3.Connection, tenant_id: str, key: tuple[str, str]) -> bool:
    row = conn.execute(
        "SELECT 1 FROM resources WHERE tenant_id = ? AND schema_id = ? AND external_id = ?",
        (tenant_id, *key),
    ).fetchone()
    return row is not None


def _expired(record: PendingRecord) -> Outcome:
    names = ", ".join(ext for _schema, ext in record.missing)
    return Outcome(
        record.index,
        record.external_id,
        "failed",
        Code.DEPENDENCY_TIMEOUT,
        f"dependencies still missing when dependencyWaitTimeout expired: {names}",
    )
