"""``reach-sync status``: a running deployment's state, read from outside, on one screen.

Two sources, because neither tells all: the service's ``/readyz`` (observe/health.py) speaks
for the one process behind its port; Kafka gives both groups' committed offsets and watermarks,
whichever process owns a partition. Offsets are read by consumers that carry the group's id but
never subscribe: no rebalance of the running service, no commit. Lag and the dead-letter count
are watermark arithmetic: exact on Kafka, possibly short on the local broker (Tansu).

Scheduled resources add their run record in Redis (schedule/runs.py) and what waits for their
next run: the scheduled topic's end minus the resource's own group's committed offsets
(``<group_id>.scheduled.<resource>``), read the same way.

Gathering is one function per source into frozen dataclasses; cli/status_view.py turns a
``StatusReport`` into lines, purely. Details: docs/design.md, "Reading the topics back".
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from redis.asyncio import Redis

from consumer.config import SyncDefinition
from consumer.errors import ConfigurationError, Retryable
from consumer.kafka import consumer_settings
from consumer.schedule.runs import RunRecord, RunStore
from consumer.schedule.scheduler import scheduled_group
from consumer.schedule.when import Schedule

__all__ = [
    "DeadLetters",
    "GroupOffsets",
    "Layout",
    "MissingTopics",
    "PartitionHealth",
    "PartitionOffsets",
    "Sample",
    "ScheduledRun",
    "ServiceHealth",
    "StageHealth",
    "StatusReader",
    "StatusReport",
    "gather",
    "health_urls",
    "parse_readyz",
    "readyz_url",
    "scheduled_runs",
    "service_health",
]

# "scheduled": one group per scheduled resource, on the scheduled topic.
Stage = Literal["router", "syncer", "scheduled"]

# Metadata, watermarks and committed offsets are single round trips; a broker slower than this
# is reported unavailable (a status command must answer quickly).
BROKER_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 2.0
# The run records are one HGETALL each; Redis slower than this is said, not waited for.
REDIS_TIMEOUT_S = 2.0
# A service listening on every interface is asked on loopback.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


class MissingTopics(ConfigurationError):
    """A topic the deployment needs does not exist: a wrong name, or the service never ran."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems), scope="topics")


# --- the figures ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """One partition of a group's topics: its watermarks and the group's committed offset
    (None: the group never committed there)."""

    topic: str
    partition: int
    low: int
    high: int
    committed: int | None

    @property
    def end(self) -> int:
        """The high watermark, or the committed offset when that is past it (the local broker's
        watermark trails its last record batch)."""
        return max(self.high, self.committed or 0)

    @property
    def lag(self) -> int:
        """Messages not committed yet; with no commit, everything the partition holds."""
        start = self.low if self.committed is None else max(self.committed, self.low)
        return max(0, self.end - start)

    @property
    def ahead(self) -> bool:
        """The committed offset is past the high watermark: the watermark is an approximation."""
        return self.committed is not None and self.committed > self.high


@dataclass(frozen=True, slots=True)
class GroupOffsets:
    """A consumer group's committed offsets over its topics, as of ``at`` (monotonic). For a
    scheduled resource's group, ``lag`` is what waits for its next run."""

    stage: Stage
    group: str
    partitions: tuple[PartitionOffsets, ...]
    at: float

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """How many messages the dead-letter topic holds (high minus low watermark, summed)."""

    topic: str
    count: int


@dataclass(frozen=True, slots=True)
class Sample:
    """What Kafka says at one moment. ``scheduled``: each scheduled resource's group on the
    scheduled topic, in the definition's order (none without scheduled resources)."""

    groups: tuple[GroupOffsets, ...]
    dead_letters: DeadLetters
    scheduled: tuple[GroupOffsets, ...] = ()


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """A scheduled resource's runs: its record in Redis (None, with ``error`` saying why, when
    it could not be read; an empty record before the first run) and its ticks around the
    report's time: ``due_tick_ms`` the latest at or before it, ``next_tick_ms`` the first after.
    The ticks come from the definition, not from the record: a stopped service writes none."""

    resource: str
    schedule: str
    group: str
    due_tick_ms: int
    next_tick_ms: int
    record: RunRecord | None
    error: str | None = None

    @property
    def overdue(self) -> bool:
        """The due tick has no finished run and none is running: it runs when a process looks
        (at once when one starts)."""
        record = self.record
        if record is None or record.running():
            return False
        return record.served_tick_ms is None or record.served_tick_ms < self.due_tick_ms


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    topic: str
    partition: int
    done: int | None
    lag: int
    no_progress_for_s: float | None


@dataclass(frozen=True, slots=True)
class StageHealth:
    name: str
    assigned: int
    lag: int
    no_progress_for_s: float | None
    partitions: tuple[PartitionHealth, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """What one process's ``/readyz`` said; ``error`` says why there is no answer."""

    url: str | None
    error: str | None = None
    ready: bool = False
    reasons: tuple[str, ...] = ()
    stages: tuple[StageHealth, ...] = ()
    blocked_tenants: tuple[str, ...] = ()
    configuration_errors: tuple[str, ...] = ()
    reach_ok: bool | None = None
    redis_ok: bool | None = None
    database_ok: bool | None = None
    uptime_s: float | None = None

    @property
    def answered(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Everything ``render`` shows. ``earlier`` is the sample rates are measured from (the
    previous refresh with ``--watch``), None when there is none."""

    name: str
    taken_at_ms: int
    now: Sample
    earlier: Sample | None
    services: tuple[ServiceHealth, ...] = field(default_factory=tuple)
    runs: tuple[ScheduledRun, ...] = ()


# --- Kafka ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """The partitions each group reads, and the dead-letter topic's, as the broker has them;
    ``scheduled``: the scheduled topic's (empty without scheduled resources)."""

    router: tuple[tuple[str, int], ...]
    syncer: tuple[tuple[str, int], ...]
    dead_letter: tuple[tuple[str, int], ...]
    scheduled: tuple[tuple[str, int], ...] = ()


def find_layout(consumer: Consumer, definition: SyncDefinition) -> Layout:
    """The topics' partitions from one metadata request; raise MissingTopics naming every topic
    that is missing.

    All topics are listed rather than each by name: the local broker creates a topic that a
    metadata request names, and a status command must never create one.
    """
    metadata = _broker_call(lambda: consumer.list_topics(timeout=BROKER_TIMEOUT_S), "metadata")
    partitions = {name: sorted(t.partitions) for name, t in metadata.topics.items()}
    kafka, topics = definition.source.kafka, definition.topics
    problems: list[str] = []
    if kafka.topic_pattern is not None:
        pattern = re.compile(kafka.topic_pattern)
        sources = sorted(t for t in partitions if not t.startswith("__") and pattern.search(t))
        if not sources:
            problems.append(f"no topic matches source.kafka.topic_pattern {kafka.topic_pattern!r}")
    else:
        sources = list(kafka.topics)
        problems += [
            f"the source topic {t} does not exist (source.kafka.topics)"
            for t in sources
            if t not in partitions
        ]
    ours = [(topics.dirty, "dirty"), (topics.dead_letter, "dead-letter")]
    if definition.scheduled_resources():
        ours.append((topics.scheduled, "scheduled"))
    for name, what in ours:
        if name not in partitions:
            problems.append(
                f"the {what} topic {name} does not exist (topics.{what.replace('-', '_')}; "
                "reach-sync run creates it)"
            )
    if problems:
        raise MissingTopics(problems)

    def of(names: Iterable[str]) -> tuple[tuple[str, int], ...]:
        return tuple((t, p) for t in names for p in partitions[t])

    scheduled = of([topics.scheduled]) if definition.scheduled_resources() else ()
    return Layout(of(sources), of([topics.dirty]), of([topics.dead_letter]), scheduled)


Marks = dict[tuple[str, int], tuple[int, int]]


def watermarks(consumer: Consumer, partitions: Iterable[tuple[str, int]]) -> Marks:
    """``(low, high)`` of each partition, asked of the broker now (not librdkafka's cache)."""
    marks: Marks = {}
    for topic, partition in partitions:
        tp = TopicPartition(topic, partition)
        ask = partial(consumer.get_watermark_offsets, tp, timeout=BROKER_TIMEOUT_S, cached=False)
        low, high = _broker_call(ask, f"the watermarks of {topic}[{partition}]")
        marks[(topic, partition)] = (int(low), int(high))
    return marks


def group_offsets(
    consumer: Consumer,
    stage: Stage,
    group: str,
    partitions: Sequence[tuple[str, int]],
    marks: Marks,
) -> GroupOffsets:
    """``group``'s committed offsets (``consumer`` carries that group id and never subscribes),
    against the watermarks in ``marks``."""
    asked = [TopicPartition(t, p) for t, p in partitions]
    committed = (
        _broker_call(
            lambda: consumer.committed(asked, timeout=BROKER_TIMEOUT_S),
            f"the committed offsets of {group}",
        )
        if asked
        else []
    )
    at = time.monotonic()
    rows = []
    for tp in committed:
        low, high = marks[(tp.topic, tp.partition)]
        offset = tp.offset if tp.offset >= 0 else None
        rows.append(PartitionOffsets(tp.topic, tp.partition, low, high, offset))
    return GroupOffsets(stage, group, tuple(rows), at)


def dead_letters(topic: str, marks: Marks) -> DeadLetters:
    count = sum(high - low for (t, _), (low, high) in marks.items() if t == topic)
    return DeadLetters(topic, count)


def _broker_call(call: Callable[[], Any], what: str) -> Any:
    try:
        return call()
    except KafkaException as exc:
        error = exc.args[0]
        reason = error.str() if isinstance(error, KafkaError) else str(error)
        raise Retryable(f"reading {what}: the broker did not answer: {reason}") from exc


class StatusReader:
    """The consumers a status needs, kept across ``--watch`` refreshes: one per group, with the
    group's id, assigned nothing and subscribed to nothing, so the running service's groups are
    never joined or disturbed, and nothing is committed."""

    def __init__(self, definition: SyncDefinition) -> None:
        kafka = definition.source.kafka
        self._definition = definition
        self._groups: dict[Stage, str] = {
            "router": f"{kafka.group_id}.router",
            "syncer": f"{kafka.group_id}.syncer",
        }
        settings = {
            "allow.auto.create.topics": False,
            # A broker that does not answer is the status's own one-line error; librdkafka's
            # retries of each connection would bury it (they stay with -v).
            "log_level": 7 if logging.getLogger("librdkafka").isEnabledFor(logging.DEBUG) else 2,
        }
        self._consumers = {
            stage: Consumer(consumer_settings(kafka, group, **settings))
            for stage, group in self._groups.items()
        }
        # One per scheduled resource: committed() answers for the consumer's own group.
        self._scheduled = {
            name: Consumer(consumer_settings(kafka, scheduled_group(definition, name), **settings))
            for name in definition.scheduled_resources()
        }

    def __enter__(self) -> StatusReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for consumer in (*self._consumers.values(), *self._scheduled.values()):
            consumer.close()  # never joined a group: closing sends no LeaveGroup

    def sample(self) -> Sample:
        """Committed offsets, watermarks and dead letters now. The layout is read each time:
        partitions may have been added, and a pattern may match new topics."""
        any_consumer = self._consumers["router"]
        layout = find_layout(any_consumer, self._definition)
        marks = watermarks(
            any_consumer, (*layout.router, *layout.syncer, *layout.dead_letter, *layout.scheduled)
        )
        stages: tuple[tuple[Stage, tuple[tuple[str, int], ...]], ...] = (
            ("router", layout.router),
            ("syncer", layout.syncer),
        )
        groups = tuple(
            group_offsets(self._consumers[stage], stage, self._groups[stage], partitions, marks)
            for stage, partitions in stages
        )
        scheduled = tuple(
            group_offsets(
                consumer,
                "scheduled",
                scheduled_group(self._definition, name),
                layout.scheduled,
                marks,
            )
            for name, consumer in self._scheduled.items()
        )
        return Sample(groups, dead_letters(self._definition.topics.dead_letter, marks), scheduled)

    def runs(self, now_ms: int) -> tuple[ScheduledRun, ...]:
        """Each scheduled resource's run record and ticks (``scheduled_runs``)."""
        return scheduled_runs(self._definition, now_ms)


def gather(
    reader: StatusReader,
    name: str,
    urls: Sequence[str] | str,
    interval_s: float,
    earlier: Sample | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> StatusReport:
    """A report: with no ``earlier`` sample, one is taken ``interval_s`` before the last, so
    that there are rates; the service(s) and the scheduled run records are asked last, next to
    the last sample. ``urls`` is the ``/readyz`` of each process to ask, or why there is none
    (``health_urls``)."""
    if earlier is None:
        earlier = reader.sample()
        sleep(interval_s)
    now = reader.sample()
    if isinstance(urls, str):
        services: tuple[ServiceHealth, ...] = (ServiceHealth(None, error=urls),)
    else:
        services = tuple(service_health(url) for url in urls)
    taken_at_ms = int(time.time() * 1000)
    return StatusReport(name, taken_at_ms, now, earlier, services, reader.runs(taken_at_ms))


# --- scheduled runs (Redis) ----------------------------------------------------------------------


def scheduled_runs(definition: SyncDefinition, now_ms: int) -> tuple[ScheduledRun, ...]:
    """Each scheduled resource's record (RunStore.read) and its ticks around ``now_ms``. Redis
    not answering is each resource's ``error``, never an exception: the Kafka figures, and the
    ticks, are worth showing without it."""
    names = definition.scheduled_resources()
    if not names:
        return ()
    records = asyncio.run(_read_records(definition, names))
    runs = []
    for name in names:
        schedule = Schedule.of(definition.resources[name].delivery)
        record, error = records[name]
        runs.append(
            ScheduledRun(
                resource=name,
                schedule=schedule.describe(),
                group=scheduled_group(definition, name),
                due_tick_ms=schedule.last_at_or_before(now_ms),
                next_tick_ms=schedule.next_after(now_ms),
                record=record,
                error=error,
            )
        )
    return tuple(runs)


async def _read_records(
    definition: SyncDefinition, names: Sequence[str]
) -> dict[str, tuple[RunRecord | None, str | None]]:
    redis: Redis = Redis.from_url(
        definition.redis.url.get_secret_value(),
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
    )
    store = RunStore(redis, definition.redis.key_prefix)
    found: dict[str, tuple[RunRecord | None, str | None]] = {}
    try:
        for name in names:
            try:
                found[name] = (await store.read(name), None)
            except Retryable as exc:
                found[name] = (None, str(exc))
    finally:
        await redis.aclose()
    return found


# --- the service's /readyz -----------------------------------------------------------------------


def health_urls(definition: SyncDefinition) -> list[str] | str:
    """The ``/readyz`` URL the definition's ``health`` section serves, or why there is none."""
    health = definition.health
    if health is None:
        return "the definition has no health section (pass --health-url)"
    if health.port == 0:
        return "health.port is 0, a port chosen at startup (the service logs it; pass --health-url)"
    host = _ANY_ADDRESS.get(health.host, health.host)
    if ":" in host:
        host = f"[{host}]"
    return [f"http://{host}:{health.port}/readyz"]


def readyz_url(url: str) -> str:
    """``host:port`` or a base URL becomes its ``/readyz``; a URL with a path is kept."""
    if "://" not in url:
        url = f"http://{url}"
    scheme, rest = url.split("://", 1)
    return url if "/" in rest.strip("/") else f"{scheme}://{rest.rstrip('/')}/readyz"


def service_health(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> ServiceHealth:
    """Ask one process; no answer (or not the JSON ``/readyz`` gives) is an ``error``, never an
    exception: the Kafka figures are worth showing without it."""
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.TimeoutException:
        return ServiceHealth(url, error=f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return ServiceHealth(url, error=f"no answer ({_reason(exc)})")
    if response.status_code not in (200, 503):
        return ServiceHealth(url, error=f"answered HTTP {response.status_code}, not /readyz")
    try:
        body = response.json()
    except ValueError:
        return ServiceHealth(url, error="answered, but not with JSON")
    if not isinstance(body, dict):
        return ServiceHealth(url, error="answered, but not with a JSON object")
    return parse_readyz(url, body)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


def parse_readyz(url: str, body: dict[str, Any]) -> ServiceHealth:
    """Read what ``/readyz`` says; fields a service of another version lacks are left out."""
    stages = tuple(
        StageHealth(
            name=str(name),
            assigned=int(stage.get("assigned_partitions") or 0),
            lag=int(stage.get("lag") or 0),
            no_progress_for_s=stage.get("no_progress_for_s"),
            partitions=tuple(
                PartitionHealth(
                    str(p.get("topic")),
                    int(p.get("partition") or 0),
                    p.get("done"),
                    int(p.get("lag") or 0),
                    p.get("no_progress_for_s"),
                )
                for p in stage.get("partitions") or ()
            ),
        )
        for name, stage in (body.get("stages") or {}).items()
    )
    return ServiceHealth(
        url,
        ready=bool(body.get("ready")),
        reasons=tuple(str(r) for r in body.get("reasons") or ()),
        stages=stages,
        blocked_tenants=tuple(str(t) for t in body.get("blocked_tenants") or ()),
        configuration_errors=tuple(str(e) for e in body.get("configuration_errors") or ()),
        reach_ok=body.get("reach_ok"),
        redis_ok=body.get("redis_ok"),
        database_ok=body.get("database_ok"),
        uptime_s=body.get("uptime_s"),
    )
