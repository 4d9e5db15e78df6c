"""Applying upserts and patches to one schema of one tenant: merge, references, history.

Semantics from docs/reach-api.md §3.1/§3.2/§4.5 and §7: fields present overwrite, absent fields are
kept, ``null`` deletes; a required field may not end up missing; ``reject`` fails an existing
resource; a patch of an absent resource fails; a ``$ref`` to a missing resource fails, or parks
the record when the request allows a dependency wait. Records of one call apply in order, and
each applied record appends the resource's full state to its version history.

The caller owns the transaction; this module only reads and writes inside it, with one
statement per table for the whole call (``writes``), because per-record statements would make
the sandbox the bottleneck of the pipeline it is meant to test.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from reach_sandbox.pending import PendingRecord, PendingStore
from reach_sandbox.registry import SchemaDef
from reach_sandbox.writes import (
    Stored,
    VersionHead,
    load_resources,
    new_id,
    point_resources,
    update_refs,
    write_versions,
)

__all__ = [
    "Code",
    "Op",
    "OpKind",
    "Outcome",
    "WriteContext",
    "WriteResult",
    "apply_writes",
    "failed",
]

OpKind = Literal["upsert", "patch", "delete"]


class Code(StrEnum):
    """Per-record failure codes, in batch ``errors`` and in synchronous error bodies."""

    VALIDATION = "VALIDATION_ERROR"
    REQUIRED = "REQUIRED_FIELD_MISSING"
    CONFLICT = "ALREADY_EXISTS"
    NOT_FOUND = "NOT_FOUND"
    MISSING_DEPENDENCY = "MISSING_DEPENDENCY"
    DEPENDENCY_TIMEOUT = "DEPENDENCY_TIMEOUT"
    SUPERSEDED = "SUPERSEDED"
    REFERENCED = "REFERENCED"
    INJECTED = "INJECTED_FAILURE"
    INTERNAL = "INTERNAL_ERROR"


class Op(NamedTuple):
    """One record of a request, with its position in the request.

    Ops and outcomes are named tuples, not frozen dataclasses: a batch makes a thousand of each,
    and a frozen dataclass costs several times more to construct.
    """

    position: int
    external_id: str
    kind: OpKind
    data: dict[str, Any] | None = None


class Outcome(NamedTuple):
    position: int
    external_id: str
    status: Literal["ok", "failed", "pending"]
    code: Code | None = None
    message: str | None = None
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "index": self.position,
            "externalId": self.external_id,
            "code": self.code,
            "message": self.message,
        }
        if self.field is not None:
            body["field"] = self.field
        return body


def failed(op: Op, code: Code, message: str, field: str | None = None) -> Outcome:
    return Outcome(op.position, op.external_id, "failed", code, message, field)


@dataclass(frozen=True, slots=True)
class WriteContext:
    """Where and how a call's records apply. ``validate`` is set when validation is deferred to
    here (asynchronous validation mode): its value is the request's ``ignoreUnknownFields``."""

    tenant_id: str
    schema: SchemaDef
    arrived_at: float
    onconflict: str = "upsert"
    dependency_wait_s: float = 0.0
    batch_id: str | None = None
    request_id: str | None = None
    validate: bool | None = None
    inject: Callable[[str], str | None] | None = None


@dataclass(slots=True)
class WriteResult:
    outcomes: list[Outcome] = field(default_factory=list)
    # resources that did not exist before this call: they may release parked records
    created: set[tuple[str, str]] = field(default_factory=set)
    # earlier parked records a later write of the same resource replaced
    superseded: list[PendingRecord] = field(default_factory=list)
    final: dict[str, Stored | None] = field(default_factory=dict)


def apply_writes(
    conn: sqlite3.Connection, ctx: WriteContext, ops: list[Op], pending: PendingStore, now: float
) -> WriteResult:
    """Apply ``ops`` in order inside the caller's transaction."""
    writer = _Writer(conn, ctx, pending, now)
    writer.load(ops)
    for op in ops:
        writer.result.outcomes.append(writer.apply(op))
    writer.flush()
    return writer.result


class _Writer:
    def __init__(
        self, conn: sqlite3.Connection, ctx: WriteContext, pending: PendingStore, now: float
    ) -> None:
        self.conn, self.ctx, self.pending, self.now = conn, ctx, pending, now
        self.schema = ctx.schema
        self.result = WriteResult()
        self.before: dict[str, Stored] = {}
        self.state: dict[str, Stored | None] = {}
        self.targets: set[tuple[str, str]] = set()
        self.parked: dict[str, PendingRecord] = {}
        self.new_parked: dict[str, PendingRecord] = {}
        self.unparked: list[str] = []
        self.prechecked = ctx.inject is not None or ctx.validate is not None
        self.reject = ctx.onconflict == "reject"
        self.missing_required = self.schema.validator.missing_required
        # A batch's rows name the batch; its request id is on the batch row.
        request_id = None if ctx.batch_id is not None else ctx.request_id
        self.head = VersionHead(
            ctx.tenant_id, self.schema.id, ctx.arrived_at, now, ctx.batch_id, request_id
        )
        self.versions: list[tuple[str, str, Any]] = []
        # external id -> position in ``versions`` of its newest row
        self.newest: dict[str, int] = {}

    def load(self, ops: list[Op]) -> None:
        ext_ids = list(dict.fromkeys(op.external_id for op in ops))
        ctx = self.ctx
        self.before = load_resources(self.conn, ctx.tenant_id, self.schema.id, ext_ids)
        self.state = dict(self.before)
        self.parked = self.pending.for_entities(self.conn, ctx.tenant_id, self.schema.id, ext_ids)
        wanted: dict[str, set[str]] = {}
        for op in ops:
            for prop, dst in self.schema.refs.items():
                value = (op.data or {}).get(prop)
                if type(value) is str:
                    wanted.setdefault(dst, set()).add(value)
        for dst, exts in wanted.items():
            found = load_resources(self.conn, ctx.tenant_id, dst, sorted(exts))
            self.targets.update((dst, ext) for ext in found)

    def apply(self, op: Op) -> Outcome:
        """One record; the hot path of every batch, so the common case does the least work."""
        data = op.data or {}
        if self.prechecked:
            checked = self._precheck(op, data)
            if isinstance(checked, Outcome):
                return checked
            data = checked
        ext = op.external_id
        current = self.state.get(ext)
        if current is None:
            if op.kind == "patch":
                return failed(op, Code.NOT_FOUND, "resource does not exist; a patch never creates")
            merged = (
                {k: v for k, v in data.items() if v is not None} if None in data.values() else data
            )
        else:
            if self.reject and op.kind == "upsert":
                return failed(op, Code.CONFLICT, "resource already exists (onconflict=reject)")
            merged = {**current.data, **data}
            if None in data.values():
                merged = {k: v for k, v in merged.items() if v is not None}
        missing_field = self.missing_required(merged)
        if missing_field is not None:
            return failed(op, Code.REQUIRED, "is required", missing_field)
        if self.schema.refs:
            missing = self._missing_targets(data)
            if missing:
                return self._park_or_fail(op, data, missing)
        if self.parked or self.new_parked:
            self._supersede(ext)
        if current is None:
            self.state[ext] = Stored(new_id(), merged, self.now, self.now)
            self.result.created.add((self.schema.id, ext))
        else:
            self.state[ext] = Stored(current.id, merged, current.created_at, self.now)
        self.newest[ext] = len(self.versions)
        self.versions.append((ext, op.kind, merged))
        return Outcome(op.position, ext, "ok")

    def _precheck(self, op: Op, data: dict[str, Any]) -> Outcome | dict[str, Any]:
        """Injected failures and deferred validation: the record to apply, or its failure."""
        if self.ctx.inject is not None:
            message = self.ctx.inject(op.external_id)
            if message is not None:
                return failed(op, Code.INJECTED, message)
        if self.ctx.validate is None:
            return data
        cleaned, errors = self.schema.validator.validate(data, op.position, self.ctx.validate)
        if cleaned is None:
            first = errors[0]
            return failed(op, Code.VALIDATION, first.message, first.field)
        return cleaned

    def _missing_targets(self, data: dict[str, Any]) -> list[tuple[str, str, str]]:
        missing: list[tuple[str, str, str]] = []
        for prop, dst in self.schema.refs.items():
            value = data.get(prop)
            if type(value) is not str or (dst, value) in self.targets:
                continue
            if dst == self.schema.id and self.state.get(value) is not None:
                continue
            missing.append((prop, dst, value))
        return missing

    def _park_or_fail(
        self, op: Op, data: dict[str, Any], missing: list[tuple[str, str, str]]
    ) -> Outcome:
        prop, _dst, value = missing[0]
        if self.ctx.dependency_wait_s <= 0 or self.ctx.batch_id is None:
            return failed(
                op,
                Code.MISSING_DEPENDENCY,
                f"referenced resource {value!r} does not exist (dependencyWaitTimeout=0)",
                prop,
            )
        self._supersede(op.external_id)
        self.new_parked[op.external_id] = PendingRecord.new(
            tenant_id=self.ctx.tenant_id,
            schema_id=self.schema.id,
            external_id=op.external_id,
            batch_id=self.ctx.batch_id,
            index=op.position,
            kind=op.kind,
            onconflict=self.ctx.onconflict,
            data=data,
            missing=tuple(dict.fromkeys((dst, ext) for _p, dst, ext in missing)),
            arrived_at=self.ctx.arrived_at,
            now=self.now,
            wait_s=self.ctx.dependency_wait_s,
            request_id=self.ctx.request_id,
        )
        return Outcome(op.position, op.external_id, "pending")

    def _supersede(self, ext: str) -> None:
        """A later-applied write of a resource replaces any earlier record still parked for it."""
        stored = self.parked.pop(ext, None)
        if stored is not None:
            self.result.superseded.append(stored)
            self.unparked.append(stored.id)
        unsaved = self.new_parked.pop(ext, None)
        if unsaved is not None:
            self.result.superseded.append(unsaved)

    def flush(self) -> None:
        conn, tenant, sid = self.conn, self.ctx.tenant_id, self.schema.id
        changed = {e: s for e, s in self.state.items() if s is not self.before.get(e)}
        first = write_versions(conn, self.head, self.versions)
        newest = self.newest
        point_resources(
            conn,
            tenant,
            sid,
            [
                (e, s.id, first + newest[e], s.created_at, s.updated_at)
                for e, s in changed.items()
                if s is not None
            ],
        )
        if self.schema.refs:
            update_refs(conn, tenant, self.schema, self.before, changed)
        self.pending.remove(conn, self.unparked)
        self.pending.add(conn, list(self.new_parked.values()))
        self.result.final = changed
