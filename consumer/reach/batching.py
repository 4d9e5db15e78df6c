"""Reach batch writes as data: how requests are cut, which records a refusal names, results.

Pure functions and result types, no I/O, so the client's HTTP code stays a thin loop over them
and every rule here is unit-tested on plain values.

- **Cutting.** Each record is serialised once; a request body is those bytes joined inside a
  fixed envelope, so its size is known exactly before sending and a request never exceeds
  ``max_request_bytes`` (docs/reach-api.md §7 Q17) or the per-request count (§1: 1000).
- **Attributing a refusal.** A synchronous 400 may list the failing records (§7 Q4: ``errors:
  [{index?, externalId?, field?, message}]``, which the sandbox emits capped at 100 entries).
  ``named_errors`` maps those entries back to positions in the request; ``isolate`` turns a
  refusal into rejections and the chunks to send again (bisecting when nothing is named).
- **Results.** ``BatchSubmission`` accounts for every external id of a call exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from consumer.errors import BadRecord, SyncError
from consumer.reach.classify import MAX_BODY_EXCERPT

__all__ = [
    "DELETE_BODY",
    "UPSERT_BODY",
    "BatchSubmission",
    "BodyShape",
    "Item",
    "RejectedRecord",
    "SubmittedBatch",
    "compact_json",
    "halves",
    "isolate",
    "json_bytes",
    "named_errors",
    "plan_chunks",
    "reason_of",
]

_log = logging.getLogger(__name__)

# Keys an error entry might carry its reason under (the sandbox's first).
_REASON_KEYS = ("message", "error", "reason", "detail")
# A reason read from the server is shown to people and written to the dead-letter topic.
_MAX_REASON = 500


# --- cutting requests ----------------------------------------------------------------------------


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON, in a bytes object of its own size.

    orjson (from 3.12) returns its whole write buffer, at least 4 KiB, whatever the length of
    the JSON: a 250-byte record held as ``orjson.dumps`` gave it takes 4 KiB, and a window holds
    up to ``max_keys`` of them until Reach answers. The copy costs about 0.2 µs a record.
    Raises ``TypeError`` (orjson's) when ``value`` is not JSON-serialisable.
    """
    return bytes(memoryview(orjson.dumps(value)))


class Item(NamedTuple):
    """One record (or external id) ready for a body: its external id and its JSON bytes
    (``json_bytes``: what a window holds until Reach answers)."""

    key: str
    json: bytes


class BodyShape(NamedTuple):
    """The bytes around the comma-separated items of a request body."""

    prefix: bytes
    suffix: bytes

    def render(self, items: Sequence[Item]) -> bytes:
        return self.prefix + b",".join(item.json for item in items) + self.suffix

    def size(self, items: Sequence[Item]) -> int:
        commas = max(0, len(items) - 1)
        return len(self.prefix) + len(self.suffix) + sum(len(i.json) for i in items) + commas


# docs/reach-api.md §3.1 (bare records under "resources") and §3.3 (cascade off, §7 Q8).
UPSERT_BODY = BodyShape(b'{"resources":[', b"]}")
DELETE_BODY = BodyShape(b'{"externalIds":[', b'],"cascade":false}')


def plan_chunks(
    items: Sequence[Item], shape: BodyShape, max_count: int, max_bytes: int
) -> tuple[list[list[Item]], list[Item]]:
    """Greedy, order-keeping chunks within both caps; and the items too large even alone."""
    chunks: list[list[Item]] = []
    oversize: list[Item] = []
    base = len(shape.prefix) + len(shape.suffix)
    current: list[Item] = []
    size = base
    for item in items:
        if base + len(item.json) > max_bytes:
            oversize.append(item)
            continue
        added = len(item.json) + (1 if current else 0)
        if current and (len(current) >= max_count or size + added > max_bytes):
            chunks.append(current)
            current, size, added = [], base, len(item.json)
        current.append(item)
        size += added
    if current:
        chunks.append(current)
    return chunks, oversize


def halves(chunk: Sequence[Item]) -> tuple[list[Item], list[Item]]:
    middle = len(chunk) // 2
    return list(chunk[:middle]), list(chunk[middle:])


# --- attributing a synchronous refusal -----------------------------------------------------------


def named_errors(body: Any, keys: Sequence[str]) -> dict[int, list[dict[str, Any]]]:
    """Positions in the request that the refusal names, with their error entries.

    An entry names a record by ``index`` (its position in the request) or, failing that, by
    ``externalId``; entries naming neither, or a position outside the request, are ignored. An
    empty answer means the refusal cannot be attributed and the caller has to bisect.
    """
    entries = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return {}
    position_of: dict[str, int] = {}
    for position, key in enumerate(keys):
        position_of.setdefault(key, position)
    named: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        index, ext = entry.get("index"), entry.get("externalId")
        found: int | None = None
        if type(index) is int and 0 <= index < len(keys):
            found = index
        elif isinstance(ext, str):
            found = position_of.get(ext)
        if found is not None:
            named.setdefault(found, []).append(entry)
    return named


def isolate(
    chunk: Sequence[Item], body: Any, error: BadRecord
) -> tuple[list[RejectedRecord], list[list[Item]]]:
    """After a refusal about records: the records rejected for good, and the chunks to resend.

    A refusal naming records rejects exactly those and resends the rest; one naming none is
    bisected; a lone record refused is rejected. Each outcome rejects or shrinks, so a caller
    repeating this ends. ``error`` is the refusal as classified (status, message, excerpt).
    """
    keys = [item.key for item in chunk]
    named = named_errors(body, keys)
    if named:
        rejected = [
            RejectedRecord(
                keys[position],
                reason_of(entries, str(error)),
                error.status,
                orjson.dumps(entries)[:MAX_BODY_EXCERPT].decode("utf-8", "replace"),
            )
            for position, entries in sorted(named.items())
        ]
        rest = [item for position, item in enumerate(chunk) if position not in named]
        return rejected, [rest] if rest else []
    if len(chunk) == 1:
        return [RejectedRecord(keys[0], str(error), error.status, error.body)], []
    _log.debug("Reach refused %d records without naming any; bisecting", len(chunk))
    first, second = halves(chunk)
    return [], [first, second]


def reason_of(entries: Sequence[Mapping[str, Any]], fallback: str = "") -> str:
    """One line from error entries: ``CODE: field: message; ...`` (bounded)."""
    parts: list[str] = []
    for entry in entries:
        words = [
            str(entry[key])
            for key in ("code", "field")
            if isinstance(entry.get(key), str) and entry[key]
        ]
        message = next((entry[k] for k in _REASON_KEYS if isinstance(entry.get(k), str)), None)
        words.append(message if message is not None else compact_json(entry))
        parts.append(": ".join(words))
    text = "; ".join(dict.fromkeys(parts)) or fallback
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def compact_json(value: Any) -> str:
    """A short JSON rendering of an unexpected value, for a reason line."""
    try:
        return orjson.dumps(value).decode()[:200]
    except TypeError:
        return repr(value)[:200]


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    """A request Reach accepted (202): poll ``batch_id`` to learn its records' fate."""

    batch_id: str
    external_ids: tuple[str, ...]
    record_count: int


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record Reach (or the client, for size or encoding) refused synchronously: dead-letter it.

    ``body`` is a bounded excerpt of what the server said about this record (≤ 2 KB).
    """

    external_id: str
    reason: str
    status: int | None
    body: str | None


@dataclass(frozen=True, slots=True)
class BatchSubmission:
    """Where every external id of one call ended up: exactly one of the three lists.

    ``batches``: accepted, outcome pending in Reach. ``rejected``: refused for good.
    ``unsent``: not sent because the call stopped at ``error`` (a ``Retryable`` or a
    ``ConfigurationError``); the batches accepted before it stay valid and must be tracked, which
    is why a mid-call failure is returned here rather than raised. A request that timed out is
    counted as unsent although Reach may have accepted it (docs/reach-api.md §7 Q12): its keys are
    also in ``in_doubt``, and Reach may hold a batch of them whose id nobody knows.
    """

    batches: tuple[SubmittedBatch, ...] = ()
    rejected: tuple[RejectedRecord, ...] = ()
    unsent: tuple[str, ...] = ()
    error: SyncError | None = None
    in_doubt: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.error is None
