"""Reading ``GET /api/batches/{id}``: whether a batch is done and which records failed.

docs/reach-api.md §3.4 leaves the status enum and the shape of ``errors.details`` open. The status
values are §7 Q5's client assumptions; ``errors.details`` is read in the sandbox's shape
(``{externalId: [{index, code, message, field?}]}``) and in plausible variants (a list of
entries, plain strings). Whatever cannot be read is reported in ``notes`` and counted as failed
records without ids; a status reading never raises, because a crash here would stall every
record of the batch, while a counted unknown only needs a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from consumer.reach.batching import compact_json, reason_of

__all__ = [
    "BatchProgress",
    "BatchState",
    "BatchStatus",
    "RecordFailure",
    "parse_status",
]

# docs/reach-api.md §7 Q5: only "success" is documented; these are the client's assumptions.
_TERMINAL_OK = frozenset({"success", "completed", "partial_success"})
_TERMINAL_BAD = frozenset({"failed", "error"})
# Keys a failure entry might name its record with (the sandbox's first).
_ID_KEYS = ("externalId", "resourceExternalId", "external_id")
_MAX_REASON = 500


class BatchState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # terminal, possibly with some failed records (partial_success)
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """§3.4 ``progress``; a count the response lacks (or garbles) is None."""

    total: int | None = None
    processed: int | None = None
    successful: int | None = None
    failed: int | None = None
    pending: int | None = None


class RecordFailure(NamedTuple):
    """A record that failed inside a batch; ``external_id`` is None when Reach did not say.

    ``code`` (the sandbox's ``VALIDATION_ERROR``, ``SUPERSEDED``, ``DEPENDENCY_TIMEOUT``...) lets
    the engine tell a record to dead-letter from one a later write already replaced.
    """

    external_id: str | None
    reason: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """One reading of ``GET /api/batches/{id}``.

    ``unattributed_failures`` counts failed records no entry of ``errors.details`` names (an
    unknown details shape, or a batch failed as a whole); the caller knows which records the
    batch held and decides what to do with them. ``notes`` says what could not be read.
    """

    batch_id: str
    status: str
    state: BatchState
    progress: BatchProgress = field(default_factory=BatchProgress)
    failures: tuple[RecordFailure, ...] = ()
    unattributed_failures: int = 0
    pending_external_ids: tuple[str, ...] = ()
    message: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state is not BatchState.RUNNING

    @property
    def finished(self) -> bool:
        """Terminal, or only records parked on a missing ``$ref`` remain (§7 Q5)."""
        p = self.progress
        only_parked = (
            p.total is not None
            and p.processed is not None
            and bool(p.pending)
            and p.processed >= p.total
        )
        return self.terminal or only_parked


# --- reading a status ----------------------------------------------------------------------------


def parse_status(batch_id: str, data: Any) -> BatchStatus:
    """A ``BatchStatus`` from the response's ``data``, whatever its shape; never raises."""
    notes: list[str] = []
    if not isinstance(data, dict):
        notes.append(f"batch data is {type(data).__name__}, not an object")
        data = {}
    raw = data.get("status")
    status = raw.strip() if isinstance(raw, str) else ""
    lowered = status.lower()
    if lowered in _TERMINAL_OK:
        state = BatchState.SUCCEEDED
    elif lowered in _TERMINAL_BAD:
        state = BatchState.FAILED
    else:
        state = BatchState.RUNNING
        if not status:
            notes.append("batch has no status string; taken as still running")
    progress = _progress(data.get("progress"), notes)
    failures, message = _failures(data.get("errors"), notes)
    attributed = len({f.external_id for f in failures if f.external_id is not None})
    failed = progress.failed
    if failed is None or (state is BatchState.FAILED and failed == 0 and not failures):
        # A batch failed as a whole may report no per-record count: all of it failed.
        failed = (progress.total or 0) if state is BatchState.FAILED else len(failures)
    unattributed = max(0, failed - attributed)
    if unattributed:
        notes.append(f"{unattributed} failed records are not named in errors.details")
    return BatchStatus(
        batch_id=batch_id,
        status=status,
        state=state,
        progress=progress,
        failures=tuple(failures),
        unattributed_failures=unattributed,
        pending_external_ids=_pending_ids(data.get("pendingResources")),
        message=message,
        notes=tuple(notes),
    )


def _count(value: Any) -> int | None:
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _progress(value: Any, notes: list[str]) -> BatchProgress:
    if not isinstance(value, dict):
        if value is not None:
            notes.append(f"progress is {type(value).__name__}, not an object")
        return BatchProgress()
    return BatchProgress(
        total=_count(value.get("totalRecords")),
        processed=_count(value.get("processedRecords")),
        successful=_count(value.get("successfulRecords")),
        failed=_count(value.get("failedRecords")),
        pending=_count(value.get("pendingRecords")),
    )


def _failures(errors: Any, notes: list[str]) -> tuple[list[RecordFailure], str | None]:
    """Per-record failures from ``errors.details``; the sandbox's shape is ``{externalId:
    [{index, code, message, field?}]}``, lists of entries and plain strings are read too."""
    if errors is None:
        return [], None
    if not isinstance(errors, dict):
        notes.append(f"errors is {type(errors).__name__}, not an object")
        return [], None
    message = errors.get("message") if isinstance(errors.get("message"), str) else None
    details = errors.get("details")
    failures: list[RecordFailure] = []
    if isinstance(details, dict):
        for key, value in details.items():
            failures.extend(_keyed(str(key), value))
    elif isinstance(details, list):
        failures.extend(_entry(entry, None) for entry in details)
    elif details is not None:
        notes.append(f"errors.details is {type(details).__name__}; no record could be named")
    return failures, message or None


def _keyed(key: str, value: Any) -> list[RecordFailure]:
    """The failures under one key of a details object (the key taken as the external id)."""
    values = value if isinstance(value, list) else [value]
    return [_entry(v, key) for v in values] or [RecordFailure(key, "failed")]


def _entry(entry: Any, default_id: str | None) -> RecordFailure:
    if isinstance(entry, str):
        return RecordFailure(default_id, entry[:_MAX_REASON])
    if not isinstance(entry, dict):
        return RecordFailure(default_id, compact_json(entry))
    named = next((entry[k] for k in _ID_KEYS if isinstance(entry.get(k), str) and entry[k]), None)
    code = entry.get("code") if isinstance(entry.get("code"), str) else None
    return RecordFailure(named or default_id, reason_of([entry]), code)


def _pending_ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    found = (item.get("resourceExternalId") for item in value if isinstance(item, dict))
    return tuple(dict.fromkeys(ext for ext in found if isinstance(ext, str) and ext))
