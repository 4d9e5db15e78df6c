"""The independent checks a chaos run ends with, each a library function with its report.

They read only what lies outside reach-sync: the source database and its row log (rowlog.py),
the sandbox's admin API (its history holds every state Reach applied, in apply order), the
audit topic and the processes' log files; none asks reach-sync what it did. They judge with the
product's own rules (its projection, its audit's field rules), so that a finding is a
difference in behaviour, not in formatting; and each matches exactly, so that it can fail:

- ``backward_versions``: every applied version of an entity is a state its row really had, and
  the states go forward in the row's commit order (and the last one is the row's last);
- ``unaudited_versions``: every applied version has the audit record of the send that made it;
- ``leaked_secrets``: no secret, no unmapped PII and no credential in logs, spans or audit.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from consumer.config import Resource, SyncDefinition
from consumer.errors import BadRecord
from consumer.records.audit import AuditRecord, decode_audit, encode_audit
from consumer.sink.projection import json_text, payload_hash, project
from reach_devstack.chaos.rowlog import (
    LOG_TABLE,
    LoggedState,
    install_row_log,
    logged_states,
    qualified,
    source_changes,
    table_columns,
)
from reach_devstack.chaos.topics import read_topic

__all__ = [
    "UNMAPPED_PII_COLUMNS",
    "AuditReport",
    "AuditedRecord",
    "BackwardReport",
    "Leak",
    "LeakReport",
    "Offence",
    "RowStates",
    "SandboxHistory",
    "State",
    "TenantOf",
    "Unaudited",
    "Unconverged",
    "Verdict",
    "Version",
    "backward_versions",
    "canonical",
    "check_resource",
    "dsn_password",
    "install_row_log",
    "leaked_secrets",
    "match_audit",
    "match_versions",
    "merchant_tenants",
    "own_fields",
    "read_audit",
    "read_history",
    "sent_pii_values",
    "source_changes",
    "unaudited_versions",
    "unmapped_values",
]

# Sandbox admin pages: its largest.
PAGE = 10_000
HTTP_TIMEOUT_S = 60.0
# Values shorter than this are not looked for in logs: "VIP" or "Ada" occur in innocent text.
MIN_VALUE_LENGTH = 8

# --- the sandbox's history ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    """One state Reach applied: the full ``data`` after the write (None after a delete), named
    the way reach-sync names it: ``tenant`` per ``destination.tenant_id_mode``, ``schema`` by
    name. A batch's versions carry its ``batch_id``, a single write's its ``request_id``;
    ``arrived_at`` is when its request reached Reach (epoch seconds)."""

    seq: int
    tenant: str
    schema: str
    external_id: str
    op: str
    data: dict[str, Any] | None
    batch_id: str | None = None
    request_id: str | None = None
    arrived_at: float | None = None
    # When Reach applied it (epoch seconds): a batch's versions when the batch was processed.
    applied_at: float | None = None


@dataclass
class SandboxHistory:
    """The versions read, oldest first, and every name of each tenant (Reach id, external id)
    mapped to the one reach-sync uses."""

    versions: list[Version]
    tenant_names: dict[str, str] = field(default_factory=dict)

    def tenants(self, given: Iterable[str]) -> set[str]:
        """``given`` (Reach ids or external ids) as reach-sync names them; unknown ones as given."""
        return {self.tenant_names.get(t, t) for t in given}


def read_history(
    sandbox_url: str,
    admin_token: str,
    *,
    after_seq: int = 0,
    tenant_id_mode: Literal["external_id", "id"] = "external_id",
) -> SandboxHistory:
    """Every version after ``after_seq`` (``GET /_admin/history``, page by page)."""
    headers = {"authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=sandbox_url, headers=headers, timeout=HTTP_TIMEOUT_S) as http:

        def get(path: str, params: Mapping[str, Any] | None = None) -> Any:
            return orjson.loads(http.get(path, params=params).raise_for_status().content)

        tenants = get("/_admin/tenants")["tenants"]
        schemas = {s["id"]: s["name"] for s in get("/_admin/schemas")["schemas"]}
        key = "externalId" if tenant_id_mode == "external_id" else "id"
        own_name = {t["id"]: t[key] for t in tenants}
        names = {**own_name, **{t["externalId"]: t[key] for t in tenants}}
        versions: list[Version] = []
        seq = after_seq
        while page := get("/_admin/history", {"afterSeq": seq, "limit": PAGE})["versions"]:
            versions += [
                Version(
                    v["seq"],
                    own_name.get(v["tenantId"], v["tenantId"]),
                    schemas.get(v["schemaId"], v["schemaId"]),
                    v["externalId"],
                    v["op"],
                    v["data"],
                    v["batchId"],
                    v["requestId"],
                    v["arrivedAt"],
                    v.get("appliedAt"),
                )
                for v in page
            ]
            seq = page[-1]["seq"]
    return SandboxHistory(versions, names)


# --- comparing values as Reach holds them -------------------------------------------------------


def canonical(value: Any) -> Hashable:
    """A value as JSON means it, hashable: numbers by value (a float as its shortest text, a
    Decimal from the audit, an exact Fragment), booleans apart from numbers, lists and objects
    by content. ``canonical(a) == canonical(b)`` when Reach would hold the same."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | Decimal):
        return ("number", Decimal(value))
    if isinstance(value, float):
        return ("number", Decimal(repr(value)))
    if isinstance(value, orjson.Fragment):
        return canonical(json.loads(json_text(value), parse_float=Decimal))
    if isinstance(value, list | tuple):
        return ("list", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    return ("other", repr(value))


# A state of an entity's own fields: (field, canonical value) pairs of the non-null ones, sorted;
# None where the entity is absent (deleted, or in another tenant).
State = tuple[tuple[str, Hashable], ...] | None


def own_state(record: Mapping[str, Any], fields: Iterable[str]) -> State:
    """The non-null ``fields`` of a record: Reach drops a field sent as null."""
    return tuple(
        sorted((name, canonical(record[name])) for name in fields if record.get(name) is not None)
    )


def own_fields(resource: Resource, columns: Iterable[str]) -> tuple[str, ...]:
    """The mapped fields fed by a column of the entity's own table (``columns``): what one row's
    state decides alone. Aggregates and groups depend on other rows and are left out. Assumes, as
    the shop's queries do, that a query column named like an own-table column is that column."""
    own = set(columns)
    return tuple(sorted(name for name, m in resource.mapping.items() if m.column in own))


# --- 2. no version goes backward -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where one version (apply order) falls among the row's logged states (commit order).

    ``ok``: it equals the state at ``log_seq``, at or after the previous version's. ``backward``:
    its state is only found before the previous version's (``previous_log_seq``), at
    ``earlier_log_seqs``. ``never_existed``: no logged state of the row equals it."""

    version_seq: int
    kind: Literal["ok", "backward", "never_existed"]
    log_seq: int | None = None
    previous_version_seq: int | None = None
    previous_log_seq: int | None = None
    earlier_log_seqs: tuple[int, ...] = ()


def match_versions(
    versions: Sequence[tuple[int, State]], states: Sequence[tuple[int, State]]
) -> list[Verdict]:
    """Greedy: each version (in apply order) takes the earliest logged state at or after the
    previous version's match that equals it. Taking the earliest leaves the most room to the
    versions after it, so a version is judged backward only when no forward assignment exists.
    ``versions`` are (sandbox seq, state), ``states`` (log seq, state), each in its order."""
    positions: dict[State, list[int]] = defaultdict(list)
    for index, (_, state) in enumerate(states):
        positions[state].append(index)
    verdicts: list[Verdict] = []
    at = 0  # index into states of the previous match
    previous: tuple[int, int] | None = None  # (version seq, log seq) of the previous match
    for version_seq, state in versions:
        found = positions.get(state, [])
        i = bisect.bisect_left(found, at)
        if i < len(found):
            at = found[i]
            log_seq = states[at][0]
            verdicts.append(Verdict(version_seq, "ok", log_seq))
            previous = (version_seq, log_seq)
            continue
        earlier = tuple(states[j][0] for j in found)
        verdicts.append(
            Verdict(
                version_seq,
                "backward" if earlier else "never_existed",
                None,
                previous[0] if previous else None,
                previous[1] if previous else None,
                earlier,
            )
        )
    return verdicts


@dataclass(frozen=True, slots=True)
class Offence:
    """A version that went backward, or whose state the row never had."""

    resource: str
    tenant: str
    external_id: str
    kind: Literal["backward", "never_existed"]
    version_seq: int
    previous_version_seq: int | None
    previous_log_seq: int | None
    earlier_log_seqs: tuple[int, ...]
    # Backward only: did this version's request reach Reach before the newer one's? Yes: two
    # unfinished sends of the entity, applied out of arrival order; no: an older read sent later.
    arrived_first: bool | None = None

    def __str__(self) -> str:
        entity = f"{self.resource} {self.tenant}/{self.external_id}"
        if self.kind == "never_existed":
            return f"{entity}: sandbox seq {self.version_seq} is no state the row ever had"
        why = {
            True: "; it arrived first: two unfinished sends applied out of arrival order",
            False: "; it arrived later: an older read sent after a newer one",
            None: "",
        }[self.arrived_first]
        return (
            f"{entity}: sandbox seq {self.version_seq} is row-log state(s)"
            f" {list(self.earlier_log_seqs)}, older than row-log seq {self.previous_log_seq}"
            f" that sandbox seq {self.previous_version_seq} had already applied{why}"
        )


@dataclass(frozen=True, slots=True)
class Unconverged:
    """An entity whose last applied version is not its row's last logged state."""

    resource: str
    tenant: str
    external_id: str
    last_version_seq: int | None
    last_log_seq: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.resource} {self.tenant}/{self.external_id}: {self.reason}"
            f" (sandbox seq {self.last_version_seq}, row-log seq {self.last_log_seq})"
        )


@dataclass
class BackwardReport:
    versions_checked: int = 0
    entities_checked: int = 0
    backward: list[Offence] = field(default_factory=list)
    never_existed: list[Offence] = field(default_factory=list)
    unconverged: list[Unconverged] = field(default_factory=list)
    # Logged states the projection refused (a bad row, dead-lettered by reach-sync).
    unprojectable_states: int = 0

    @property
    def offenders(self) -> list[Offence]:
        return [*self.backward, *self.never_existed]

    @property
    def ok(self) -> bool:
        return not (self.backward or self.never_existed)


# Gives a logged row its tenant as reach-sync names it (None: unknown).
TenantOf = Callable[[Mapping[str, Any]], str | None]


def merchant_tenants(dsn: str) -> TenantOf:
    """The shop's tenant of a row: its merchant's ``external_id`` (both resources' queries join
    ``merchants`` on ``merchant_id``), as the merchants are now."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, external_id FROM public.merchants").fetchall()
    merchants: dict[Any, Any] = {r[0]: r[1] for r in rows}

    def tenant_of(row: Mapping[str, Any]) -> str | None:
        found = merchants.get(row.get("merchant_id"))
        return None if found is None else str(found)

    return tenant_of


class RowStates:
    """The logged states of one row, projected once, as seen from each tenant."""

    def __init__(
        self,
        resource: Resource,
        own: tuple[str, ...],
        logged: Sequence[LoggedState],
        tenant_of: TenantOf,
    ) -> None:
        self.seqs = [s.seq for s in logged]
        self.projected: list[tuple[str | None, State]] = []
        self.unprojectable = 0
        for state in logged:
            self.projected.append(self._project(resource, own, state, tenant_of))

    def _project(
        self, resource: Resource, own: tuple[str, ...], state: LoggedState, tenant_of: TenantOf
    ) -> tuple[str | None, State]:
        if state.row is None:
            return None, None
        tenant = tenant_of(state.row)
        try:
            # Columns the row lacks (aggregates, groups) read as null: only own fields count.
            projected = project(resource, {**state.row, resource.tenant: tenant})
        except BadRecord:
            self.unprojectable += 1
            # Equal to no version: a state nothing can have been sent for.
            return tenant, (("\x00unprojectable", state.seq),)
        return projected.tenant, own_state(projected.record, own)

    def tenants(self) -> set[str]:
        return {t for t, s in self.projected if t is not None and s is not None}

    def seen_from(self, tenant: str) -> list[tuple[int, State]]:
        """(log seq, state) as ``tenant`` should hold it: absent where the row is deleted or
        belongs to another tenant."""
        return [
            (seq, state if owner == tenant else None)
            for seq, (owner, state) in zip(self.seqs, self.projected, strict=True)
        ]


def check_resource(
    name: str,
    resource: Resource,
    own: tuple[str, ...],
    versions: Sequence[Version],
    logged: Mapping[str, Sequence[LoggedState]],
    tenant_of: TenantOf,
    tenants: set[str],
    report: BackwardReport,
    since_seq: int = 0,
) -> None:
    """``backward_versions`` for one resource, on versions and logged states already read:
    ``versions`` are the resource's (all of its history: the last one decides convergence),
    ``logged`` its rows' states by key, ``tenants`` the tenants to judge."""
    by_entity: dict[tuple[str, str], list[Version]] = defaultdict(list)
    for version in versions:
        if version.schema == resource.reach_schema and version.tenant in tenants:
            by_entity[(version.tenant, version.external_id)].append(version)
    rows = {key: RowStates(resource, own, states, tenant_of) for key, states in logged.items()}
    report.unprojectable_states += sum(r.unprojectable for r in rows.values())
    entities = set(by_entity)
    entities |= {(t, key) for key, r in rows.items() for t in r.tenants() & tenants}
    for tenant, key in sorted(entities):
        history = sorted(by_entity.get((tenant, key), []), key=lambda v: v.seq)
        row = rows.get(key)
        states = row.seen_from(tenant) if row is not None else []
        checked = [(v.seq, _version_state(v, own)) for v in history if v.seq > since_seq]
        if checked:
            report.entities_checked += 1
            report.versions_checked += len(checked)
        by_seq = {v.seq: v for v in history}
        for verdict in match_versions(checked, states):
            if verdict.kind != "ok":
                offence = Offence(
                    name,
                    tenant,
                    key,
                    verdict.kind,
                    verdict.version_seq,
                    verdict.previous_version_seq,
                    verdict.previous_log_seq,
                    verdict.earlier_log_seqs,
                    _arrived_first(by_seq, verdict),
                )
                (report.backward if verdict.kind == "backward" else report.never_existed).append(
                    offence
                )
        if states:
            _converged(name, tenant, key, history, states, own, report)


def _arrived_first(by_seq: Mapping[int, Version], verdict: Verdict) -> bool | None:
    if verdict.previous_version_seq is None:
        return None
    late = by_seq[verdict.version_seq].arrived_at
    newer = by_seq[verdict.previous_version_seq].arrived_at
    return None if late is None or newer is None else late < newer


def _version_state(version: Version, own: tuple[str, ...]) -> State:
    return None if version.data is None else own_state(version.data, own)


def _converged(
    name: str,
    tenant: str,
    key: str,
    history: Sequence[Version],
    states: Sequence[tuple[int, State]],
    own: tuple[str, ...],
    report: BackwardReport,
) -> None:
    last_seq, expected = states[-1]
    last = history[-1] if history else None
    actual = _version_state(last, own) if last is not None else None
    if actual == expected:
        return
    if expected is not None and expected and expected[0][0] == "\x00unprojectable":
        reason = "the row's last state cannot be projected (a bad row)"
    elif last is None:
        reason = "the row's last state was never applied"
    elif expected is None:
        reason = "the row is gone (or in another tenant) but its last version is not a delete"
    else:
        reason = "the last version is not the row's last state"
    report.unconverged.append(
        Unconverged(name, tenant, key, last.seq if last else None, last_seq, reason)
    )


def backward_versions(
    dsn: str,
    definition: SyncDefinition,
    sandbox_url: str,
    admin_token: str,
    tenants: Iterable[str],
    since_seq: int = 0,
    *,
    tenant_of: TenantOf | None = None,
) -> BackwardReport:
    """Does any entity's applied state go backward, or never exist, in its row's commit order?

    For each resource, its own table is its first trigger's (keyed by the entity id, as
    verify.py assumes); the row log must have been installed (``install_row_log``) before the
    versions after ``since_seq`` were sent, best while the sandbox equalled the database. Each
    logged row state is projected with reach-sync's own ``project`` (its tenant from
    ``tenant_of``, by default the shop's merchant), and compared with each version on the own
    fields (``own_fields``) that are not null. Convergence (``unconverged``): each entity's last
    version against its row's last logged state.
    """
    history = read_history(
        sandbox_url, admin_token, tenant_id_mode=definition.destination.tenant_id_mode
    )
    wanted = history.tenants(tenants)
    tenant_of = tenant_of or merchant_tenants(dsn)
    report = BackwardReport()
    for name, resource in definition.resources.items():
        table = resource.triggers[0].table
        own = own_fields(resource, table_columns(dsn, table))
        check_resource(
            name,
            resource,
            own,
            history.versions,
            logged_states(dsn, table),
            tenant_of,
            wanted,
            report,
            since_seq,
        )
    return report


# --- 3. every applied state audited --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditedRecord:
    """One message of the audit topic, decoded."""

    partition: int
    offset: int
    record: AuditRecord


@dataclass(frozen=True, slots=True)
class Unaudited:
    """A version no audit record accounts for; ``same_state_audited``: another send of exactly
    this payload to this entity was audited (the gap is this send's record, not the state's)."""

    resource: str
    tenant: str
    external_id: str
    seq: int
    op: str
    batch_id: str | None
    request_id: str | None
    reason: str
    same_state_audited: bool = False

    def __str__(self) -> str:
        via = f"batch {self.batch_id}" if self.batch_id else f"request {self.request_id}"
        again = "; the same payload was audited for another send" if self.same_state_audited else ""
        return (
            f"{self.resource} {self.tenant}/{self.external_id} sandbox seq {self.seq}"
            f" ({self.op}, {via}): {self.reason}{again}"
        )


@dataclass(frozen=True, slots=True)
class AuditedNotApplied:
    """An ``accepted`` upsert of a batch Reach applied, with no version of it in that batch."""

    resource: str
    tenant: str
    external_id: str
    batch_id: str

    def __str__(self) -> str:
        return (
            f"{self.resource} {self.tenant}/{self.external_id}: audited as accepted in batch"
            f" {self.batch_id}, which Reach applied without it"
        )


@dataclass
class AuditReport:
    versions_checked: int = 0
    audit_records: int = 0
    undecodable: int = 0
    # How the versions were accounted for.
    by_batch: int = 0
    by_single_write: int = 0
    by_unconfirmed: int = 0
    # Only by the write-ahead ``sending`` record: the process ended before the outcome.
    by_sending: int = 0
    deletes: int = 0
    unaudited: list[Unaudited] = field(default_factory=list)
    audited_not_applied: list[AuditedNotApplied] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unaudited or self.audited_not_applied)

    @property
    def states_never_audited(self) -> list[Unaudited]:
        """The unaudited versions whose payload no audit record of the entity holds at all (the
        others' state was audited for another send of it: a send whose own record was lost)."""
        return [u for u in self.unaudited if not u.same_state_audited]


def sent_record(resource: Resource, data: Mapping[str, Any]) -> dict[str, Any]:
    """The record reach-sync sent for a version: every mapped field and the groups field, null
    where Reach holds none (projection.py sends full records; Reach drops nulls)."""
    names = [*resource.mapping, *([resource.groups.field] if resource.groups else [])]
    return {name: data.get(name) for name in names}


def _values_agree(record: AuditRecord, sent: Mapping[str, Any]) -> bool:
    return all(canonical(v) == canonical(sent.get(k)) for k, v in record.values.items())


def _accounts(version: Version, payload: str | None, record: AuditRecord) -> str | None:
    """How ``record`` accounts for ``version`` (``by_batch``, ``by_single_write``,
    ``by_unconfirmed``), or None. The rules follow consumer/sink/delivery.py and records/audit.py:
    a batch's records carry its id, except a batch request whose answer was lost (``unconfirmed``,
    mode batch, no id); a single write (history: a request id) has no batch id, mode realtime,
    outcome accepted or unconfirmed; every delete goes through a batch; a ``sending`` record
    (written before the request left) accounts for a send whose outcome was never audited."""
    if record.outcome == "sending":
        return _announced(version, payload, record)
    if version.data is None:
        if record.kind != "delete" or version.batch_id is None:
            return None
        if record.batch_id == version.batch_id:
            return "by_batch"
        lost = record.batch_id is None and record.outcome == "unconfirmed"
        return "by_unconfirmed" if lost else None
    if record.kind != "upsert" or record.payload_sha256 != payload:
        return None
    if version.batch_id is not None:
        if record.batch_id == version.batch_id and record.mode == "batch":
            return "by_batch"
        lost = (
            record.batch_id is None and record.mode == "batch" and record.outcome == "unconfirmed"
        )
        return "by_unconfirmed" if lost else None
    if record.batch_id is None and record.mode == "realtime":
        if record.outcome == "accepted":
            return "by_single_write"
        if record.outcome == "unconfirmed":
            return "by_unconfirmed"
    return None


def _announced(version: Version, payload: str | None, record: AuditRecord) -> str | None:
    """A ``sending`` record (written and acknowledged before its request left; no batch id yet)
    accounts for a version of the same kind, payload and delivery mode: the process that sent
    it ended before it could audit the outcome (kill -9)."""
    mode = "batch" if version.batch_id is not None else "realtime"
    if version.data is None:
        return "by_sending" if record.kind == "delete" and mode == "batch" else None
    if record.kind == "upsert" and record.payload_sha256 == payload and record.mode == mode:
        return "by_sending"
    return None


def _why_not(version: Version, payload: str | None, records: Sequence[AuditRecord]) -> str:
    if not records:
        return "no audit record of this entity"
    if version.data is None:
        return "no delete audit record of this batch (nor an unconfirmed delete)"
    if version.batch_id is not None:
        in_batch = [r for r in records if r.batch_id == version.batch_id]
        if in_batch:
            return f"batch audited with another payload or kind ({in_batch[0].kind})"
        return "no audit record of this batch (nor an unconfirmed batch send of this payload)"
    return "no single-write audit record of this payload (accepted or unconfirmed)"


def match_audit(
    versions: Iterable[Version],
    resources: Mapping[str, Resource],
    records: Iterable[AuditRecord],
    report: AuditReport | None = None,
) -> AuditReport:
    """Account for each version (of a resource in ``resources``, by Reach schema) with an audit
    record of the same tenant, Reach schema and entity id (``_accounts``). An upsert's record
    must also carry the payload hash of the version's data (``sent_record``) and values equal
    to the data's, where it keeps values."""
    report = report or AuditReport()
    by_schema = {r.reach_schema: (name, r) for name, r in resources.items()}
    index: dict[tuple[str, str, str], list[AuditRecord]] = defaultdict(list)
    for record in records:
        report.audit_records += 1
        index[(record.tenant, record.reach_schema, record.id)].append(record)
    applied: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for version in versions:
        found = by_schema.get(version.schema)
        if found is None:
            continue
        name, resource = found
        report.versions_checked += 1
        if version.batch_id is not None:
            applied[version.batch_id].add((version.tenant, version.schema, version.external_id))
        candidates = index.get((version.tenant, version.schema, version.external_id), [])
        sent = None if version.data is None else sent_record(resource, version.data)
        payload = None if sent is None else payload_hash(sent)
        how, disagree = None, False
        # An outcome record first; the write-ahead one only when there is none.
        for record in sorted(candidates, key=lambda r: r.outcome == "sending"):
            how = _accounts(version, payload, record)
            if how is not None and (sent is None or _values_agree(record, sent)):
                break
            disagree = disagree or how is not None
            how = None
        if how is None:
            same = payload is not None and any(
                r.kind == "upsert" and r.payload_sha256 == payload for r in candidates
            )
            reason = (
                "its audit record's values disagree with its payload hash"
                if disagree
                else _why_not(version, payload, candidates)
            )
            report.unaudited.append(
                Unaudited(
                    name,
                    version.tenant,
                    version.external_id,
                    version.seq,
                    version.op,
                    version.batch_id,
                    version.request_id,
                    reason,
                    same,
                )
            )
            continue
        if version.data is None:
            report.deletes += 1
        setattr(report, how, getattr(report, how) + 1)
    for (tenant, schema, entity), kept in index.items():
        found = by_schema.get(schema)
        for record in kept:
            batch = record.batch_id
            if (
                found is not None
                and batch in applied
                and record.kind == "upsert"
                and record.outcome == "accepted"
                and (tenant, schema, entity) not in applied[batch]
            ):
                report.audited_not_applied.append(
                    AuditedNotApplied(found[0], tenant, entity, batch)
                )
    return report


def read_audit(bootstrap_servers: str, topic: str) -> tuple[list[AuditedRecord], int]:
    """Every record of the audit topic and how many messages did not decode. Each partition is
    assigned from its beginning (no consumer group is joined, nothing is committed) and read to
    its end-of-partition event at its high watermark, as reach-sync's own readers do (the local
    broker's watermark trails a partition's last batch: records/dlq_read.py)."""
    found: list[AuditedRecord] = []
    undecodable = 0
    for message in read_topic(bootstrap_servers, topic):
        try:
            record = decode_audit(message.value() or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            undecodable += 1
            continue
        found.append(AuditedRecord(message.partition() or 0, message.offset() or 0, record))
    return found, undecodable


def unaudited_versions(
    definition: SyncDefinition,
    sandbox_url: str,
    admin_token: str,
    tenants: Iterable[str],
    bootstrap_servers: str,
    since_seq: int = 0,
    *,
    reread_after_s: float = 2.0,
) -> AuditReport:
    """Is every version after ``since_seq`` (of the definition's resources, in ``tenants``)
    accounted for by an audit record on ``definition.topics.audit`` (``match_audit``)?

    The audit's ``tenant`` is the tenant value the records went to (the query's tenant column:
    the merchant's external id for the shop); the history's is Reach's tenant id, named here the
    same way (``read_history``). When something is unaudited the topic is read once more after
    ``reread_after_s``, in case a read ended before a record the broker was still writing.
    """
    history = read_history(
        sandbox_url,
        admin_token,
        after_seq=since_seq,
        tenant_id_mode=definition.destination.tenant_id_mode,
    )
    wanted = history.tenants(tenants)
    versions = [v for v in history.versions if v.tenant in wanted]
    topic = definition.topics.audit
    report = AuditReport()
    for attempt in range(2):
        records, undecodable = read_audit(bootstrap_servers, topic)
        report = match_audit(versions, definition.resources, (r.record for r in records))
        report.undecodable = undecodable
        if report.ok or attempt or reread_after_s <= 0:
            break
        time.sleep(reread_after_s)
    return report


# --- 4. nothing secret or unmapped in logs, spans and audit ---------------------------------------

# Unmapped columns of the shop (devstack/reach_devstack/shop.sql) that hold personal data: staff
# notes about a customer. The other unmapped columns (merchant_id, updated_at, the merchants'
# name, currency and timestamps) are keys, times and business data, not about a person.
UNMAPPED_PII_COLUMNS: tuple[tuple[str, str], ...] = (("public.customers", "internal_notes"),)
# A JWT (header and claims are base64url JSON objects): what the logs' redaction masks.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_GRAM = MIN_VALUE_LENGTH


@dataclass(frozen=True, slots=True)
class Leak:
    """Where a kind of value was found; never the value."""

    kind: str
    where: str
    line: int

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}:{self.line}"


@dataclass
class LeakReport:
    files: int = 0
    lines: int = 0
    audit_records: int = 0
    found: list[Leak] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.found


class _Needles:
    """Many literal values looked for in each line: the short ones with ``in``, the others
    through an index of their first ``_GRAM`` characters, so that thousands of values cost one
    pass over the line rather than one per value."""

    def __init__(self, kinds: Mapping[str, str]) -> None:
        self.short: list[tuple[str, str]] = []
        self.index: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for value, kind in kinds.items():
            if len(value) < _GRAM:
                self.short.append((value, kind))
            else:
                self.index[value[:_GRAM]].append((value, kind))

    def kinds_in(self, line: str) -> set[str]:
        found = {kind for value, kind in self.short if value in line}
        if self.index and len(line) >= _GRAM:
            grams = {line[i : i + _GRAM] for i in range(len(line) - _GRAM + 1)}
            for gram in grams & self.index.keys():
                found.update(kind for value, kind in self.index[gram] if value in line)
        return found


def _forms(value: str) -> set[str]:
    """A value as it may be written: itself, and inside a JSON string (escaped)."""
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}


def _needles(secrets: Mapping[str, str], unmapped: Sequence[str], pii: Sequence[str]) -> _Needles:
    kinds: dict[str, str] = {}
    named = [(v, "mapped PII (pii: send/hash)") for v in pii]
    named += [(v, "unmapped PII") for v in unmapped]
    named += [(v, f"secret: {name}") for name, v in secrets.items()]  # last: a secret's kind wins
    for value, kind in named:
        if value:
            kinds.update(dict.fromkeys(_forms(value), kind))
    return _Needles(kinds)


def _scan(lines: Iterable[tuple[str, int, str]], needles: _Needles, shapes: bool) -> Iterator[Leak]:
    for where, number, line in lines:
        kinds = needles.kinds_in(line)
        if shapes and "eyJ" in line and _JWT.search(line):
            kinds.add("credential-shaped: a JWT")
        for kind in sorted(kinds):
            yield Leak(kind, where, number)


def leaked_secrets(
    paths: Iterable[Path | str],
    audit: Iterable[str | bytes | AuditedRecord],
    secrets: Mapping[str, str],
    unmapped_values: Sequence[str] = (),
    pii_values: Sequence[str] = (),
    *,
    credential_shapes: bool = True,
) -> LeakReport:
    """Look for each secret (``secrets``: its kind, e.g. "the database password", to its value),
    each unmapped-PII value and each mapped-PII value in every line of the files at ``paths``
    (reach-sync's logs; with ``OTEL_TRACES_EXPORTER=console`` its spans are there too) and in
    each audit record (its JSON text, or an ``AuditedRecord`` re-encoded), also as escaped in a
    JSON string; and, with ``credential_shapes``, for a JWT. A leak names the kind and where
    (file and line; ``audit`` and record number or partition@offset), never the value. Values
    are looked for as given: ``unmapped_values`` already drops short ones."""
    needles = _needles(secrets, unmapped_values, pii_values)
    report = LeakReport()

    def file_lines() -> Iterator[tuple[str, int, str]]:
        for path in map(Path, paths):
            if not path.exists():
                report.missing_files.append(str(path))
                continue
            report.files += 1
            with path.open(encoding="utf-8", errors="replace") as lines:
                for number, line in enumerate(lines, 1):
                    report.lines += 1
                    yield str(path), number, line

    def audit_lines() -> Iterator[tuple[str, int, str]]:
        for number, item in enumerate(audit, 1):
            report.audit_records += 1
            if isinstance(item, AuditedRecord):
                where = f"audit partition {item.partition}"
                text = encode_audit(item.record).decode()
                yield where, item.offset, text
            else:
                text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
                yield "audit record", number, text

    report.found = [
        *_scan(file_lines(), needles, credential_shapes),
        *_scan(audit_lines(), needles, credential_shapes),
    ]
    return report


def _distinct_values(dsn: str, table: str, column: str) -> set[str]:
    """The column's values now, and every value the row log saw it hold (if installed)."""
    schema, name = qualified(table)
    found: set[str] = set()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT DISTINCT {column}::text FROM {table} WHERE {column} IS NOT NULL"
            ).format(column=sql.Identifier(column), table=sql.Identifier(schema, name))
        ).fetchall()
        found.update(str(r[0]) for r in rows)
        logged = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LOG_TABLE,)).fetchone()
        if logged and logged[0]:
            rows = conn.execute(
                "SELECT DISTINCT row ->> %s FROM chaos.row_log"
                " WHERE tbl = %s AND row ->> %s IS NOT NULL",
                (column, f"{schema}.{name}", column),
            ).fetchall()
            found.update(str(r[0]) for r in rows)
    return found


def unmapped_values(
    dsn: str,
    columns: Sequence[tuple[str, str]] = UNMAPPED_PII_COLUMNS,
    *,
    min_length: int = MIN_VALUE_LENGTH,
) -> list[str]:
    """The distinct values of the unmapped PII ``columns`` (table, column) at the end of a run:
    those the tables hold and those the row log saw. Values shorter than ``min_length`` (after
    trimming) are left out: "VIP", one of the load's notes, is also an ordinary word."""
    values: set[str] = set()
    for table, column in columns:
        values |= _distinct_values(dsn, table, column)
    return sorted(v for v in values if len(v.strip()) >= min_length)


def sent_pii_values(
    dsn: str, definition: SyncDefinition, *, min_length: int = MIN_VALUE_LENGTH
) -> list[str]:
    """The distinct values of the own-table columns mapped with ``pii: send`` or ``hash``: sent
    to Reach (or hashed), never to be in a log, a span or the audit. Short ones left out."""
    values: set[str] = set()
    for resource in definition.resources.values():
        table = resource.triggers[0].table
        columns = table_columns(dsn, table)
        for mapping in resource.mapping.values():
            if mapping.pii != "none" and mapping.column in columns:
                values |= _distinct_values(dsn, table, mapping.column)
    return sorted(v for v in values if len(v.strip()) >= min_length)


def dsn_password(dsn: str) -> str | None:
    """The password in a libpq DSN (URL or key=value), if it has one."""
    password = conninfo_to_dict(dsn).get("password")
    return None if password is None else str(password)
