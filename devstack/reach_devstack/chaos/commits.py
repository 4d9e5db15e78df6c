"""Offsets never committed before the outcome: the syncer group's commits, watched from outside.

The syncer may commit a dirty key's offset only once the entity's outcome is settled: Reach
holds the recomputed state, or it already held it (skipped as unchanged), or the record was
dead-lettered. The audit cannot show the skipped ones, so the check asks Reach itself.

While the run goes on, ``CommitWatch`` reads the group's committed offsets every half second
and notes when each one moved (the time it was seen, never earlier than the commit itself).
At the end, each dirty key below a seen offset is judged at the moment that offset was first
seen: the key's causes from the entity's own row say which committed state of the row it
stands for (the row log's last state logged no later than the cause's commit time, Debezium's
``source.ts_ms``), and by that moment the sandbox must have applied that state or a later one
of the row (compared on the own-row fields, as the backward check does). A commit that ran
ahead of its window's send shows as an entity Reach held older when its key was committed.

Sound against false alarms: a row's later change takes the row's lock after the earlier one's
commit, so the state found is never newer than the one the key stands for; Reach's
``appliedAt`` and the time a commit is seen both read this machine's clock; a batch is applied
before its status says so, which the syncer waits for. Keys with no cause from their own row
(a change of another table), and entities with a record dead letter, are counted, not judged.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from consumer.config import Resource, SyncDefinition
from consumer.router.dirty import DirtyKey, decode_dirty
from reach_devstack.chaos.checks import RowStates, State, TenantOf, Version, own_fields, own_state
from reach_devstack.chaos.rowlog import LoggedState, logged_states, qualified, table_columns

__all__ = [
    "CommitReport",
    "CommitWatch",
    "EarlyCommit",
    "EntityJudge",
    "committed_before_outcome",
    "judge_commits",
    "watching",
]

# How often the watch reads the committed offsets, and how long one read may take.
WATCH_EVERY_S = 0.5
READ_TIMEOUT_S = 5.0


@dataclass
class CommitWatch:
    """When each partition's committed offset was seen to move: ``seen[p]`` holds (epoch
    seconds, offset) in the order seen."""

    seen: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    reads: int = 0
    failed_reads: int = 0

    def note(self, at: float, offsets: Mapping[int, int]) -> None:
        self.reads += 1
        for partition, offset in offsets.items():
            moves = self.seen[partition]
            if offset >= 0 and (not moves or moves[-1][1] != offset):
                moves.append((at, offset))

    def first_seen_past(self, partition: int, offset: int) -> float | None:
        """When a committed offset past ``offset`` (one that covers it) was first seen."""
        for at, committed in self.seen.get(partition, []):
            if committed > offset:
                return at
        return None

    def moves(self) -> int:
        return sum(len(m) for m in self.seen.values())


@contextmanager
def watching(bootstrap_servers: str, group: str, topic: str) -> Iterator[CommitWatch]:
    """Watch ``group``'s commits on ``topic`` for the duration of the block, on a thread that
    ends with it. The reader joins no group: ``committed()`` only asks the coordinator."""
    watch = CommitWatch()
    stop = threading.Event()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
            # A broker restarted by the run is not news: failed reads are counted instead of
            # librdkafka printing every reconnection attempt.
            "log_level": 0,
        }
    )

    def read() -> None:
        partitions: list[TopicPartition] = []
        while not stop.wait(WATCH_EVERY_S):
            try:
                if not partitions:
                    found = consumer.list_topics(topic, timeout=READ_TIMEOUT_S).topics.get(topic)
                    ids = sorted(found.partitions) if found is not None and not found.error else []
                    partitions = [TopicPartition(topic, p) for p in ids]
                    if not partitions:
                        continue
                offsets = consumer.committed(partitions, timeout=READ_TIMEOUT_S)
            except KafkaException:
                watch.failed_reads += 1  # the broker or the coordinator away for a moment
                continue
            watch.note(time.time(), {tp.partition: tp.offset for tp in offsets if not tp.error})

    thread = threading.Thread(target=read, name="chaos-commit-watch")
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join()
        consumer.close()


@dataclass(frozen=True, slots=True)
class EarlyCommit:
    """A dirty key committed while Reach still held its entity older than the key's state."""

    resource: str
    entity_id: str
    partition: int
    offset: int
    committed_seen_at: float
    wanted_log_seq: int
    held_version_seq: int | None

    def __str__(self) -> str:
        seq = self.held_version_seq
        held = "nothing" if seq is None else f"sandbox seq {seq}"
        return (
            f"{self.resource}/{self.entity_id}: dirty key {self.partition}/{self.offset} was seen"
            f" committed at {self.committed_seen_at:.3f} while Reach held {held}, not row-log"
            f" state {self.wanted_log_seq} or a later one"
        )


@dataclass
class CommitReport:
    commit_moves: int = 0
    keys_judged: int = 0
    # Below no offset seen committed (committed after the watch ended, or never).
    keys_not_committed: int = 0
    # No cause from the entity's own row, or none logged by the cause's time: nothing to ask.
    keys_without_own_cause: int = 0
    keys_of_dead_lettered: int = 0
    early: list[EarlyCommit] = field(default_factory=list)


class EntityJudge:
    """One resource's rows (row log, commit order) and versions (sandbox, apply order): what
    a dirty key asks of Reach, and what Reach held at a moment. Rows are projected on first
    use, as the backward check projects them (``RowStates``)."""

    def __init__(
        self,
        resource: Resource,
        own: tuple[str, ...],
        logged: Mapping[str, Sequence[LoggedState]],
        versions: Iterable[Version],
        tenant_of: TenantOf,
    ) -> None:
        self._resource, self._own, self._logged, self._tenant_of = resource, own, logged, tenant_of
        self._rows: dict[str, RowStates] = {}
        self._times: dict[str, list[float]] = {}
        self._versions: dict[tuple[str, str], list[Version]] = defaultdict(list)
        for version in versions:
            if version.schema == resource.reach_schema:
                self._versions[(version.tenant, version.external_id)].append(version)

    def wanted(self, entity_id: str, ts: float) -> tuple[str, int, set[State]] | None:
        """For a key whose own-row cause committed at ``ts``: the tenant that should hold the
        entity, the row-log seq of the state the key stands for, and the states (that one or
        a later one) Reach may hold once the key is settled; None if the log has no state by
        then."""
        logged = self._logged.get(entity_id)
        if not logged:
            return None
        row = self._rows.get(entity_id)
        if row is None:
            row = self._rows[entity_id] = RowStates(
                self._resource, self._own, logged, self._tenant_of
            )
            self._times[entity_id] = [state.logged_at for state in logged]
        at = bisect.bisect_right(self._times[entity_id], ts) - 1
        if at < 0:
            return None
        owners = [owner for owner, _ in row.projected[: at + 1] if owner is not None]
        if not owners:
            return None
        tenant = owners[-1]
        seen = row.seen_from(tenant)
        return tenant, logged[at].seq, {state for _, state in seen[at:]}

    def held(self, tenant: str, entity_id: str, at: float) -> tuple[int | None, State]:
        """The version Reach held at ``at`` (the last applied by then), and its state."""
        last: Version | None = None
        for version in self._versions.get((tenant, entity_id), []):
            applied = version.applied_at
            if applied is not None and applied <= at and (last is None or version.seq > last.seq):
                last = version
        if last is None or last.data is None:
            return (None if last is None else last.seq), None
        return last.seq, own_state(last.data, self._own)


def committed_before_outcome(
    watch: CommitWatch,
    messages: Iterable[Message],
    judges: Mapping[str, EntityJudge],
    own_tables: Mapping[str, str],
    dead_lettered: set[tuple[str, str]],
) -> CommitReport:
    """Judge each dirty key (``messages`` of the dirty topic) at the moment its offset was first
    seen committed. ``judges`` and ``own_tables`` (``schema.table``) are by resource;
    ``dead_lettered`` holds (resource, entity id) of the record dead letters."""
    report = CommitReport(commit_moves=watch.moves())
    for message in messages:
        partition, offset = message.partition() or 0, message.offset() or 0
        seen_at = watch.first_seen_past(partition, offset)
        if seen_at is None:
            report.keys_not_committed += 1
            continue
        try:
            key = decode_dirty(message.value() or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # not a dirty key (the syncer dead-letters it): nothing to ask of Reach
        judge = judges.get(key.resource)
        entity_id = str(key.id)
        if judge is None:
            continue
        if (key.resource, entity_id) in dead_lettered:
            report.keys_of_dead_lettered += 1
            continue
        ts = _own_cause_ts(key, own_tables[key.resource])
        wanted = None if ts is None else judge.wanted(entity_id, ts)
        if wanted is None:
            report.keys_without_own_cause += 1
            continue
        tenant, log_seq, acceptable = wanted
        report.keys_judged += 1
        held_seq, held = judge.held(tenant, entity_id, seen_at)
        if held not in acceptable:
            report.early.append(
                EarlyCommit(key.resource, entity_id, partition, offset, seen_at, log_seq, held_seq)
            )
    return report


def _own_cause_ts(key: DirtyKey, own_table: str) -> float | None:
    """The latest commit time (epoch seconds) of the key's causes from the entity's own row."""
    times = [
        cause.source_ts_ms / 1000.0
        for cause in key.causes()
        if cause.kind == "cdc"
        and cause.source_ts_ms is not None
        and cause.table is not None
        and ".".join(qualified(cause.table)) == own_table
    ]
    return max(times, default=None)


def judge_commits(
    watch: CommitWatch,
    messages: Iterable[Message],
    dsn: str,
    definition: SyncDefinition,
    versions: Sequence[Version],
    tenant_of: TenantOf,
    dead_lettered: set[tuple[str, str]],
) -> CommitReport:
    """``committed_before_outcome``, with the row log read here."""
    judges, own_tables = {}, {}
    for name, resource in definition.resources.items():
        table = resource.triggers[0].table
        own = own_fields(resource, table_columns(dsn, table))
        judges[name] = EntityJudge(resource, own, logged_states(dsn, table), versions, tenant_of)
        own_tables[name] = ".".join(qualified(table))
    return committed_before_outcome(watch, messages, judges, own_tables, dead_lettered)
