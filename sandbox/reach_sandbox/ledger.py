"""Batch status values and progress counters.

The status values sit in one table (docs/reach-api.md §7 Q5 asks for that, because only ``success``
is documented). A batch is ``pending`` until the worker takes it, ``processing`` until every
record has an outcome (records parked on a missing ``$ref`` keep it there; they are counted in
``pendingRecords`` and ``processedRecords`` both), then ``success``, ``partial_success`` or
``failed``.

Counters change in three places: the batch's own processing, a parked record applied later
because another write created its dependency, and a parked record expiring or being superseded.
The ``Ledger`` gathers those changes inside one transaction and writes each batch row once.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from reach_sandbox.engine import Outcome

__all__ = ["TERMINAL", "BatchStatus", "BatchType", "Ledger", "final_status"]


class BatchStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    PARTIAL_SUCCESS = "partial_success"
    FAILED = "failed"


TERMINAL = frozenset({BatchStatus.SUCCESS, BatchStatus.PARTIAL_SUCCESS, BatchStatus.FAILED})


class BatchType(StrEnum):
    """docs/reach-api.md §3.4; which type each endpoint produces is §3.1-§3.3 [INF]."""

    INGEST = "PARTNER_RESOURCE_JSON_INGEST"
    PATCH = "PARTNER_RESOURCE_BATCH_PATCH"
    DELETE = "PARTNER_RESOURCE_BATCH_DELETE"


def final_status(successful: int, failed: int) -> BatchStatus:
    if failed == 0:
        return BatchStatus.SUCCESS
    return BatchStatus.FAILED if successful == 0 else BatchStatus.PARTIAL_SUCCESS


@dataclass(slots=True)
class _Row:
    total: int
    processed: int
    successful: int
    failed: int
    pending: int
    status: str
    errors: dict[str, Any] = field(default_factory=lambda: {"summary": {}, "details": {}})

    def fail(self, outcome: Outcome) -> None:
        self.failed += 1
        code = str(outcome.code)
        summary = self.errors["summary"]
        summary[code] = summary.get(code, 0) + 1
        self.errors["details"].setdefault(outcome.external_id, []).append(outcome.to_json())


def _row_of(found: tuple[Any, ...]) -> _Row:
    total, processed, successful, failed, pending, status, errors = found
    row = _Row(total, processed, successful, failed, pending, status)
    if errors:
        row.errors = orjson.loads(errors)
    return row


class Ledger:
    """Counter changes for any number of batches, flushed once per transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._rows: dict[str, _Row | None] = {}

    def _row(self, batch_id: str) -> _Row | None:
        if batch_id not in self._rows:
            found = self._conn.execute(
                "SELECT total, processed, successful, failed, pending, status, errors "
                "FROM batches WHERE id = ?",
                (batch_id,),
            ).fetchone()
            # A batch removed by an admin reset has nobody left to report to.
            self._rows[batch_id] = None if found is None else _row_of(found)
        return self._rows[batch_id]

    def set_total(self, batch_id: str, total: int) -> None:
        row = self._row(batch_id)
        if row is not None:
            row.total = total

    def record(self, batch_id: str, outcomes: list[Outcome]) -> None:
        """Records' first outcomes, as the batch is processed."""
        row = self._row(batch_id)
        if row is None:
            return
        row.processed += len(outcomes)
        for outcome in outcomes:
            if outcome.status == "ok":
                row.successful += 1
            elif outcome.status == "pending":
                row.pending += 1
            else:
                row.fail(outcome)

    def resolve(self, batch_id: str, outcome: Outcome) -> None:
        """The final outcome of a record that was parked."""
        row = self._row(batch_id)
        if row is None:
            return
        row.pending -= 1
        if outcome.status == "ok":
            row.successful += 1
        else:
            row.fail(outcome)

    def flush(self, now: float) -> list[str]:
        """Write every touched batch; returns the ids that became terminal."""
        finished: list[str] = []
        for batch_id, row in self._rows.items():
            if row is None:
                continue
            completed_at: float | None = None
            if row.processed >= row.total and row.pending == 0:
                row.status = final_status(row.successful, row.failed)
                completed_at = now
                finished.append(batch_id)
            elif row.status == BatchStatus.PENDING:
                row.status = BatchStatus.PROCESSING
            self._conn.execute(
                "UPDATE batches SET total = ?, processed = ?, successful = ?, failed = ?, "
                "pending = ?, status = ?, errors = ?, completed_at = coalesce(?, completed_at), "
                "started_at = coalesce(started_at, ?) WHERE id = ?",
                (
                    row.total,
                    row.processed,
                    row.successful,
                    row.failed,
                    row.pending,
                    row.status,
                    orjson.dumps(row.errors),
                    completed_at,
                    now,
                    batch_id,
                ),
            )
        self._rows.clear()
        return finished
