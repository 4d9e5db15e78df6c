"""The core pipeline benchmark: a Debezium backlog through reach-sync, and its latency.

Backlog part: a LocalStack without Debezium (broker, Postgres, Redis, Reach sandbox), the shop
seeded with 50,000 customers and 50,000 transactions (every event's entity is a real row: a
recompute that finds no row would turn it into a delete), and ``--events`` Debezium events
preloaded into ``shop.public.customers`` and ``shop.public.transactions`` (4 partitions each,
lz4, with the schema block or ``--no-schemas``): bench/router.py's events (the shared fixture's
schema blocks, keys drawn Zipf over 50,000 per table), each sent to its table's topic. Then, in
the same run, over that same backlog:

- raw: confluent-kafka ``consume(1000)`` touching key and value, one consumer on both topics;
- decode: the same plus the router's decoder (router.py's ``routing_decode``): the typed
  decoding ceiling;
- router: ``run_router`` on examples/shop.yaml (router.py's ``measure_router``), events/s through
  to acknowledged dirty keys and committed source offsets, from its first committed batch;
- library floor: router.py's ``measure_floor``, the router's work in its libraries alone (the
  typed decode, the router's dirty keys encoded and produced, each batch acknowledged and
  committed) with none of its own Python between them (``--repeat`` runs of these four,
  medians);
- pipeline: ``run_service(role="all")`` in this process, with a fresh group, dirty topic and
  last-sent prefix: both stages down to the sandbox, the example's delivery modes (customers in
  batches, transactions real time). Timed from the router's first committed batch to the last
  window the syncer finished, once it had every dirty key the router produced and nothing moved
  for ``QUIET_S``. Source queries are counted per window: ``consumer.syncer.process`` builds its
  WindowSink and SourceDatabase from subclasses here that only count (recompute calls per
  resource per window attempt); nothing else changes;
- peak RSS: ``python -m consumer.cli.main run --config examples/shop.yaml`` as a child process (the
  demo's environment, again a fresh group and last-sent prefix) on the same backlog until its
  syncer committed every dirty key (or for ``--rss-max-seconds``); the child's VmHWM, sampled
  until it exits, so this process's own memory (the preload) does not count. Its throughput,
  from committed offsets polled every ``OFFSETS_POLL_S``, is a cross-check. (Throughput is
  measured in-process because ``run`` reports its stats only at exit.)

The sink: the pipeline, RSS and split runs (and the slow-Reach RSS run) send to the sandbox in
its sink mode (``PUT /_admin/sink``, sandbox/reach_sandbox/README.md), unless ``--strict-sink``.
The sandbox then answers every upload as it would a valid one (same endpoints, auth, limits,
status codes, 202 body, batch id, batch status ``success`` with every record successful) but
neither validates the records against their schema nor applies them: no body file, no worker,
no resource, version or ref rows, one batch row per request. Measured with py-spy on this
benchmark, applying the records (SQLite: load, versions, resource pointers, commit) was about
half of the strict sandbox's busy time and schema validation about a tenth; on a 2-core machine
that CPU is taken from reach-sync, so the throughput figure would measure the test double too.
The strict mode stays the sandbox's default, and the latency part uses it.

CPU: during each measured part (raw, decode, router and floor: summed over ``--repeat``; the
pipeline run; each child run; the latency load) bench/cpu.py reads the CPU seconds of reach-sync
and of every stack component's process group (broker, Postgres with its backends, Redis,
sandbox, Debezium), the load generator, the wall seconds and the machine's busy seconds
(/proc/stat), so each share of the 2 cores is visible. In-process parts count this process as
reach-sync (its own threads too: the raw/decode consumers, the progress loop, the latency side
consumers); child runs count the `reach-sync run` children once reaped, and this process as
"bench".

Latency part: a fresh LocalStack with Debezium (its default shop size unless
``--latency-customers``), both resources in real-time mode (customers' window set to
``--latency-window-ms``, by default the example's real-time window, transactions' 100 ms),
reach-sync in a process of the bench's own for each run (so that no run pays for the Kafka
clients an earlier one left behind); once the snapshot is synced and the pipeline idle, the workload
generator (devstack/reach_devstack/load.py, in its own process so it does not share this one's GIL)
changes the shop at ``--latency-rate`` operations/s for ``--latency-seconds``; then the
source-commit -> accepted percentiles from ``SyncerStats.latencies_ms``, and its commit -> routed
part (the router's ``enqueued_ms`` minus the source commit time of each dirty key, read from the
dirty topic by a side consumer). Each ``--latency-curve`` rate is measured the same way on a
fresh stack of its own: the local broker's CPU per request grows as its partitions fill
(bench/broker_growth.py), so a rate measured after the others would meet a slower broker.

Prints a table, then the figures, ratios and targets as one JSON object on the last line.

    .venv/bin/python bench/pipeline.py                     # the issue's 1,000,000 events
    .venv/bin/python bench/pipeline.py --events 200000 --repeat 1 --no-rss
    .venv/bin/python bench/pipeline.py --no-pipeline --no-latency --rss-max-seconds 180
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

# bench/cpu.py, next to this file.
from cpu import (  # type: ignore[import-not-found]
    CpuMeter,
    CpuUsage,
    GcTime,
    cpu_during,
    describe_gc,
    format_usage,
    gc_during,
)
from reach_devstack.demo import demo_env
from reach_devstack.load import LoadStats, run_load
from reach_devstack.stack import LocalStack, StackEndpoints, StackOptions

# bench/router.py, next to this file (run as `python bench/pipeline.py`).
from router import (  # type: ignore[import-not-found]
    CONSUME_BATCH,
    KEYS,
    PARTITIONS,
    TARGET_ROUTER_TO_DECODE,
    EventFactory,
    _rate,
    _touch,
    backlog_consumer,
    measure_floor,
    measure_router,
    produce_waiting,
    routing_decode,
)

import consumer
from consumer.cli.process_tuning import tune_gc
from consumer.config import Resource, SyncDefinition
from consumer.config_file import load_definition
from consumer.kafka import abandoned_consumers
from consumer.records.audit import FLUSH_TIMEOUT_S, AuditWriter
from consumer.router.dirty import EntityId, decode_dirty
from consumer.router.loop import RouterStats
from consumer.service import ServiceStats, run_service
from consumer.sink.recompute import Recomputed, SourceDatabase
from consumer.syncer import process as syncer_process
from consumer.syncer.stats import SyncerStats
from consumer.syncer.window_sink import WindowSink
from consumer.syncer.windows import Window

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shop.yaml"
# Where the `reach-sync run` children start (`python -m` puts it first on their path): the
# checkout this process imported reach-sync from, so that an A/B with an older checkout on
# PYTHONPATH runs the older code in the children too, not this file's checkout.
CODE_ROOT = Path(consumer.__file__).resolve().parents[1]
TOPIC_PREFIX = "shop"
TABLES = ("customers", "transactions")
# Every key the events use exists as a row (router.py draws ranks 1..KEYS for both tables).
SEED_CUSTOMERS = KEYS
SEED_TRANSACTIONS = KEYS
# The pipeline is drained once nothing moved for this long; longer than any window_ms of the
# definition (500 ms), so a last window that is still open is not missed.
QUIET_S = 2.0
SAMPLE_S = 0.05
# A child run counts as drained once its syncer committed the dirty topic's end and then
# committed nothing more for this long (longer than any window of examples/shop.yaml).
CHILD_QUIET_S = 3.0
OFFSETS_POLL_S = 0.25
PROGRESS_S = 15.0
# A bound on each drain (pipeline, child), generous: the pipeline is far slower than the router.
RUN_TIMEOUT_S = 1800.0
PIPELINE_STOP_S = 90.0
CHILD_STOP_S = 60.0
# After the Debezium snapshot: idle once nothing moved for this long.
IDLE_S = 3.0
SNAPSHOT_TIMEOUT_S = 600.0
CATCH_UP_TIMEOUT_S = 300.0
# Targets of the issue (the router's is router.py's TARGET_ROUTER_TO_DECODE, imported above).
TARGET_DECODE_TO_RAW = 0.40
TARGET_PIPELINE_TO_RAW = 0.10
TARGET_P99_MS = 250.0
# The knee of the latency curve: the highest rate whose commit -> accepted p99 stays within this.
KNEE_P99_MS = 1000.0
# reach-sync's own share (source event appended -> accepted): p99 <= the window + this.
OWN_SHARE_MARGIN_MS = 100.0
TARGET_RSS_MIB = 200.0
TARGET_QUERIES_PER_RESOURCE_PER_WINDOW = 1


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load() -> tuple[float, float, float]:
    return os.getloadavg()


# --- the backlog ------------------------------------------------------------------------------


class _ShopEvents(EventFactory):
    """bench/router.py's events, each remembering its table so it goes to that table's topic."""

    table = TABLES[0]

    def customer_row(self) -> dict[str, Any]:
        self.table = "customers"
        return super().customer_row()

    def transaction_row(self) -> dict[str, Any]:
        self.table = "transactions"
        return super().transaction_row()


def _topic(table: str) -> str:
    return f"{TOPIC_PREFIX}.public.{table}"


@dataclass
class Backlog:
    events: int
    avg_value_bytes: int
    per_topic: dict[str, int]
    # Next offset of each source partition once preloaded: what the router has to commit.
    ends: dict[tuple[str, int], int]


def preload(bootstrap: str, events: int, schemas: bool) -> Backlog:
    """Create the two Debezium topics and fill them with ``events`` events."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [NewTopic(_topic(t), PARTITIONS, 1) for t in TABLES]
    for future in admin.create_topics(topics).values():
        future.result(timeout=30)
    ends: dict[tuple[str, int], int] = {}
    failures: list[str] = []

    def delivered(error: Any, message: Message) -> None:
        if error is not None:
            failures.append(str(error))
            return
        key = (message.topic(), message.partition())
        ends[key] = max(ends.get(key, 0), message.offset() + 1)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
            "on_delivery": delivered,
        }
    )
    factory = _ShopEvents(schemas, random.Random(7))
    per_topic: Counter[str] = Counter()
    total = 0
    for _ in range(events):
        key, value = factory.next()
        topic = _topic(factory.table)
        per_topic[topic] += 1
        total += len(value)
        produce_waiting(producer, topic, value, key)
    if producer.flush(300) != 0 or failures:
        raise SystemExit(f"preload: not every event was acknowledged ({failures[:1]})")
    if sum(ends.values()) != events:
        raise SystemExit(f"preload: offsets add up to {sum(ends.values())}, not {events}")
    return Backlog(events, total // events, dict(per_topic), ends)


def _definition(endpoints: StackEndpoints, tag: str) -> tuple[SyncDefinition, dict[str, str]]:
    """examples/shop.yaml on the stack, with its own group, dirty topic and last-sent keys."""
    env = {
        **demo_env(endpoints, group=f"bench-{tag}"),
        "REACH_SYNC_DIRTY_TOPIC": f"bench.dirty.{tag}",
        "REACH_SYNC_DEAD_LETTER_TOPIC": f"bench.dead-letter.{tag}",
        "REACH_SYNC_AUDIT_TOPIC": f"bench.audit.{tag}",
        "REACH_SYNC_REDIS_PREFIX": f"bench:{tag}",
    }
    return load_definition(EXAMPLE, env), env


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _meter(endpoints: StackEndpoints, child_runs: bool = False, load: bool = False) -> CpuMeter:
    """CPU of reach-sync and of each stack component (bench/cpu.py).

    In-process parts: reach-sync is this process's own time, which also holds the bench's
    threads (the consumers of raw/decode, the progress loop, the latency side consumers).
    Child runs: reach-sync is the `reach-sync run` children, counted once this process reaped
    them (at the end of the run), and "bench" this process's own time meanwhile. ``load``: the
    load generator, the process pool worker this process reaps when the load ends.
    """
    me = os.getpid()
    own = {"bench": me} if child_runs else {"reach-sync": me}
    reaped = {"reach-sync": me} if child_runs else {}
    if load:
        reaped["load generator"] = me
    return CpuMeter(groups=dict(endpoints.pids), own=own, reaped=reaped)


# --- raw, decode, router ----------------------------------------------------------------------


def measure_consume_all(bootstrap: str, backlog: Backlog, work: Any) -> float:
    """router.py's measure_consume over both topics at once, asking each ``consume`` for no more
    than what is left: measure_consume takes one topic, and its last, partial batch waits out
    the 1 s consume timeout, which it counts (at 300,000 events/s, 1 s is 300,000 events)."""
    consumer = backlog_consumer(bootstrap, list(backlog.ends))
    seen, first, started = 0, 0, 0.0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while seen < backlog.events and time.monotonic() < deadline:
            batch = consumer.consume(min(CONSUME_BATCH, backlog.events - seen), 1.0)
            for message in batch:
                work(message.key(), message.value(), message.topic())
            seen += len(batch)
            if batch and not first:
                first, started = len(batch), time.perf_counter()
        ended = time.perf_counter()
    finally:
        consumer.close()
    if seen < backlog.events:
        raise SystemExit(f"consume: read {seen} of {backlog.events}")
    return _rate(backlog.events, first, started, ended)


# --- the whole pipeline, in this process ------------------------------------------------------

_window_queries: contextvars.ContextVar[Counter[str] | None] = contextvars.ContextVar(
    "bench_window_queries", default=None
)


@dataclass
class QueryLog:
    """Source queries per window attempt, and how many windows are being processed now."""

    attempts: int = 0
    in_flight: int = 0
    max_per_resource: int = 0
    max_per_window: int = 0
    per_window: Counter[int] = field(default_factory=Counter)
    # How long each window's processing took (recompute, send, audit: WindowSink.process), and
    # each recompute query, in ms: the syncer's share of a window after it is due.
    process_ms: list[int] = field(default_factory=list)
    recompute_ms: list[int] = field(default_factory=list)
    # Each audit flush: waiting for the broker to acknowledge a window's audit records.
    audit_flush_ms: list[int] = field(default_factory=list)

    def record(self, counts: Counter[str]) -> None:
        self.attempts += 1
        self.max_per_resource = max([self.max_per_resource, *counts.values()])
        self.max_per_window = max(self.max_per_window, sum(counts.values()))
        self.per_window[sum(counts.values())] += 1


_queries = QueryLog()


class _CountingDatabase(SourceDatabase):
    async def recompute(self, resource: Resource, ids: Sequence[EntityId]) -> Recomputed:
        counts = _window_queries.get()
        if counts is not None:
            counts[resource.reach_schema] += 1
        started = time.perf_counter()
        try:
            return await super().recompute(resource, ids)
        finally:
            _queries.recompute_ms.append(round((time.perf_counter() - started) * 1000))


class _TimedAudit(AuditWriter):
    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        started = time.perf_counter()
        try:
            super().flush(timeout_s)
        finally:
            _queries.audit_flush_ms.append(round((time.perf_counter() - started) * 1000))


class _CountingSink(WindowSink):
    async def process(self, window: Window) -> None:
        # Set in this window's task; the per-resource tasks it gathers copy the context.
        counts: Counter[str] = Counter()
        _window_queries.set(counts)
        _queries.in_flight += 1
        started = time.perf_counter()
        try:
            await super().process(window)
        finally:
            _queries.in_flight -= 1
            _queries.record(counts)
            _queries.process_ms.append(round((time.perf_counter() - started) * 1000))


@contextmanager
def _counting_queries() -> Iterator[QueryLog]:
    global _queries
    _queries = QueryLog()
    # Where run_service's syncer looks them up (consumer/syncer/process.py).
    saved = syncer_process.WindowSink, syncer_process.SourceDatabase, syncer_process.AuditWriter
    syncer_process.WindowSink, syncer_process.SourceDatabase = _CountingSink, _CountingDatabase
    syncer_process.AuditWriter = _TimedAudit
    try:
        yield _queries
    finally:
        (
            syncer_process.WindowSink,
            syncer_process.SourceDatabase,
            syncer_process.AuditWriter,
        ) = saved


@dataclass
class _TimedStats(ServiceStats):
    """ServiceStats that also remember when the router committed its first batch."""

    first_batch: tuple[float, int] | None = None

    def set_router(self, snapshot: RouterStats) -> None:
        if self.first_batch is None:
            self.first_batch = (time.perf_counter(), snapshot.events)
        super().set_router(snapshot)


@dataclass
class PipelineRun:
    rate: float
    seconds: float
    router: RouterStats
    syncer: SyncerStats
    queries: QueryLog
    resources: int
    # From the service's start to its stop (the quiet period and the shutdown included).
    cpu: CpuUsage | None = None
    # Of which in the garbage collector, over the same span.
    gc: GcTime | None = None


def _moving(stats: ServiceStats) -> tuple[int, ...]:
    router, syncer = stats.router, stats.syncer
    return (
        router.events if router else 0,
        syncer.dirty_keys,
        syncer.windows,
        syncer.commits,
        syncer.retries,
    )


def _progress(stats: ServiceStats) -> str:
    router, syncer = stats.router, stats.syncer
    return (
        f"routed {router.events if router else 0:,} events -> "
        f"{router.dirty_keys if router else 0:,} dirty keys; syncer {syncer.dirty_keys:,} keys, "
        f"{syncer.windows:,} windows, sent {syncer.sent:,}, skipped {syncer.skipped:,} "
        f"(load average {_load()[0]:.2f})"
    )


def measure_pipeline(definition: SyncDefinition, events: int, meter: CpuMeter) -> PipelineRun:
    stats = _TimedStats()
    stop = threading.Event()
    with _counting_queries() as queries, cpu_during(meter) as cpu, gc_during() as gc_time:
        thread = threading.Thread(
            target=run_service,
            args=(definition, stop),
            kwargs={"role": "all", "stats": stats},
            name="reach-sync",
        )
        thread.start()
        try:
            ended = _wait_quiet(stats, queries, events, QUIET_S, RUN_TIMEOUT_S)
        finally:
            stop.set()
            thread.join(PIPELINE_STOP_S)
    if stats.router_error is not None:
        raise SystemExit(f"pipeline: the router stopped: {stats.router_error}")
    if ended is None:
        raise SystemExit(f"pipeline: not drained in {RUN_TIMEOUT_S:.0f} s: {_progress(stats)}")
    assert stats.first_batch is not None and stats.router is not None
    started, first = stats.first_batch
    return PipelineRun(
        rate=(events - first) / (ended - started),
        seconds=ended - started,
        router=stats.router,
        syncer=stats.syncer,
        queries=queries,
        resources=len(definition.resources),
        cpu=cpu.usage,
        gc=gc_time,
    )


def _wait_quiet(
    stats: ServiceStats, queries: QueryLog, events: int, quiet_s: float, timeout_s: float
) -> float | None:
    """When the syncer finished its last window (perf_counter), once at least ``events`` were
    routed, every dirty key the router produced is in a window, no window is being processed,
    and nothing moved for ``quiet_s``; None if that did not happen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_state, last_change = _moving(stats), time.perf_counter()
    next_progress = time.monotonic() + PROGRESS_S
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
        if stats.router_error is not None:
            raise SystemExit(f"the router stopped: {stats.router_error}")
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_S
            _log(f"  {_progress(stats)}; {queries.in_flight} windows in flight")
        state, now = _moving(stats), time.perf_counter()
        if state != last_state:
            last_state, last_change = state, now
        router = stats.router
        quiet = (
            router is not None
            and router.events >= events
            and stats.syncer.dirty_keys >= router.dirty_keys
            and stats.syncer.windows > 0
            and queries.in_flight == 0
        )
        if quiet and now - last_change >= quiet_s:
            return last_change
    return None


# --- peak RSS: `reach-sync run` as a child process --------------------------------------------


@dataclass
class RssRun:
    vm_hwm_mib: float
    # Each child's own peak, in the order of the roles.
    vm_hwm_mib_each: list[float]
    rate: float
    seconds: float
    routed: int
    dirty_committed: int
    expected_dirty: int
    # False: stopped after --rss-max-seconds, before the backlog was drained.
    drained: bool
    exit_code: int | None
    log_tail: str
    # From the children's start until this process reaped them.
    cpu: CpuUsage | None = None


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _end_offsets(consumer: Consumer, partitions: list[TopicPartition]) -> int:
    """Sum of the partitions' high watermarks (on the local broker, the last batch's first
    offset + 1: a lower bound, hence the quiet period before a run counts as drained)."""
    return sum(consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in partitions)


def _committed(consumer: Consumer, partitions: list[TopicPartition]) -> int:
    """Sum of a group's committed offsets (each partition's offsets count from 0 here)."""
    total = 0
    for tp in consumer.committed(partitions, timeout=10):
        if tp.error is None and tp.offset > 0:
            total += tp.offset
    return total


def measure_rss(
    endpoints: StackEndpoints,
    backlog: Backlog,
    expected_dirty: int,
    state: Path,
    max_seconds: float,
    roles: tuple[str, ...] = ("all",),
) -> RssRun:
    """Until the children committed every event and dirty key, or for ``max_seconds`` (if > 0).

    One child per role: ``("all",)`` is one `reach-sync run`; ``("router", "syncer")`` runs the
    stages as two processes (no shared GIL). The peak is the sum of the children's VmHWM.
    """
    tag = _tag()
    definition, env = _definition(endpoints, tag)
    group = definition.source.kafka.group_id
    log_path = state / f"reach-sync-{tag}.log"
    sources = [TopicPartition(t, p) for t, p in backlog.ends]
    dirty = [
        TopicPartition(definition.topics.dirty, p)
        for p in range(definition.topics.dirty_partitions)
    ]
    watchers = {
        stage: Consumer(
            {
                "bootstrap.servers": endpoints.bootstrap_servers,
                "group.id": f"{group}.{stage}",
                "enable.auto.commit": False,
            }
        )
        for stage in ("router", "syncer")
    }
    meter = _meter(endpoints, child_runs=True)
    meter.start()
    children = _start_children(roles, env, log_path)
    hwm = [0] * len(children)
    first, routed, committed = None, 0, 0
    moved_at = time.perf_counter()
    drained = False
    try:
        deadline = time.monotonic() + (max_seconds or RUN_TIMEOUT_S)
        while time.monotonic() < deadline:
            time.sleep(OFFSETS_POLL_S)
            _sample(children, hwm, log_path)
            routed = _committed(watchers["router"], sources)
            previous, committed = committed, _committed(watchers["syncer"], dirty)
            now = time.perf_counter()
            if first is None and routed > 0:
                first = (now, routed)
            if committed != previous:
                moved_at = now
            if routed >= backlog.events:
                # Routing is done, so the dirty topic is final; its size is this run's own (the
                # router merges triggers per batch, so it differs from the router-only run's).
                expected_dirty = _end_offsets(watchers["syncer"], dirty)
                quiet = now - moved_at >= CHILD_QUIET_S
                if committed >= expected_dirty and quiet:
                    drained = True
                    break
        if not (drained or max_seconds):
            raise SystemExit(f"rss: not drained in {RUN_TIMEOUT_S:.0f} s ({routed}, {committed})")
        ended = time.perf_counter()
        exit_code = _stop_children(children, hwm)
        cpu = meter.stop()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for watcher in watchers.values():
            watcher.close()
    if first is None:
        raise SystemExit(f"rss: the child's router committed nothing; see {log_path}")
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-6:])
    return RssRun(
        vm_hwm_mib=sum(hwm) / 1024,
        vm_hwm_mib_each=[round(kib / 1024, 1) for kib in hwm],
        rate=(routed - first[1]) / (ended - first[0]) if drained else 0.0,
        seconds=ended - first[0],
        routed=routed,
        dirty_committed=committed,
        expected_dirty=expected_dirty,
        drained=drained,
        exit_code=exit_code,
        log_tail=tail,
        cpu=cpu,
    )


@contextmanager
def _sandbox_latency(endpoints: StackEndpoints, ms: float) -> Iterator[None]:
    """Every request to the sandbox waits ``ms`` first (its latency fault), inside the block."""
    headers = {"authorization": f"Bearer {endpoints.sandbox_admin_token}"}
    with httpx.Client(base_url=endpoints.sandbox_url, headers=headers, timeout=30) as http:
        http.post("/_admin/faults", json={"kind": "latency", "ms": ms}).raise_for_status()
        try:
            yield
        finally:
            http.delete("/_admin/faults").raise_for_status()


def _sandbox_sink(endpoints: StackEndpoints, enabled: bool) -> None:
    """The sandbox's sink mode on or off (sandbox/reach_sandbox/README.md, "Sink mode")."""
    headers = {"authorization": f"Bearer {endpoints.sandbox_admin_token}"}
    with httpx.Client(base_url=endpoints.sandbox_url, headers=headers, timeout=30) as http:
        http.put("/_admin/sink", json={"enabled": enabled}).raise_for_status()


def _sample(children: list[subprocess.Popen[bytes]], hwm: list[int], log_path: Path) -> None:
    """Update each child's VmHWM; stop the bench if one died."""
    for n, child in enumerate(children):
        if child.poll() is not None:
            raise SystemExit(f"rss: reach-sync exited early ({child.returncode}); {log_path}")
        hwm[n] = max(hwm[n], _vm_hwm_kib(child.pid))


def _start_children(
    roles: tuple[str, ...], env: dict[str, str], log_path: Path
) -> list[subprocess.Popen[bytes]]:
    children = []
    with log_path.open("wb") as log:
        for role in roles:
            argv = [sys.executable, "-m", "consumer.cli.main", "run", "--config", str(EXAMPLE)]
            argv += ["--role", role]
            children.append(
                subprocess.Popen(
                    argv,
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=CODE_ROOT,
                )
            )
    return children


def _stop_children(children: list[subprocess.Popen[bytes]], hwm: list[int]) -> int | None:
    """SIGTERM all, reap each (updating its VmHWM in ``hwm``); the first bad exit code or 0."""
    for child in children:
        child.send_signal(signal.SIGTERM)
    codes = []
    for n, child in enumerate(children):
        code, hwm[n] = _reap(child, hwm[n])
        codes.append(code)
    return next((c for c in codes if c != 0), 0)


def _reap(child: subprocess.Popen[bytes], hwm_kib: int) -> tuple[int | None, int]:
    """Wait for the child to drain and exit (bounded), still sampling its VmHWM; returns its
    exit code (None if it had to be killed) and the peak VmHWM in KiB.

    Not ``ru_maxrss``: Linux carries the pre-exec address space's high-water mark into it, and
    the child was forked from this process, so it would report this process's RSS (the preload).
    """
    deadline = time.monotonic() + CHILD_STOP_S
    while time.monotonic() < deadline:
        hwm_kib = max(hwm_kib, _vm_hwm_kib(child.pid))
        try:
            code = child.wait(0.1)
        except subprocess.TimeoutExpired:
            continue
        return code, hwm_kib
    _log(f"rss: reach-sync did not stop within {CHILD_STOP_S:.0f} s of SIGTERM; killing it")
    child.kill()
    child.wait()
    return None, hwm_kib


# --- latency at a steady load, with Debezium --------------------------------------------------


@dataclass
class LatencyRun:
    # --latency-curve: per rate, the load achieved and commit -> accepted percentiles.
    curve: list[dict[str, Any]]
    latencies_ms: list[int]
    routed_ms: list[int]
    # Source event appended to its topic -> accepted: reach-sync's own share.
    own_ms: list[int]
    # Each stage of a change's way, sampled on its own (the stages do not add up exactly).
    stages_ms: dict[str, list[int]]
    load: LoadStats
    window_ms: int
    batch_over: int
    snapshot_rows: int
    snapshot_s: float
    syncer: dict[str, int]
    # False: the pipeline had not caught up CATCH_UP_TIMEOUT_S after the load; the latencies
    # of what it had not finished are missing, so the percentiles are lower bounds.
    caught_up: bool
    # From the load's start until the pipeline was quiet after it (the --latency-curve aside).
    cpu: CpuUsage | None = None
    # The bench process's garbage collector over the same span (reach-sync runs in it).
    gc: GcTime | None = None


def _realtime(definition: SyncDefinition, window_ms: int, batch_over: int) -> SyncDefinition:
    """Every resource in real-time mode; customers (batch in the example) with ``window_ms``;
    ``batch_over`` (0: as the definition says) for every resource."""
    resources = {}
    for name, resource in definition.resources.items():
        delivery = resource.delivery
        if delivery.mode != "realtime":
            delivery = delivery.model_copy(update={"mode": "realtime", "window_ms": window_ms})
        if batch_over:
            delivery = delivery.model_copy(update={"batch_over": batch_over})
        resources[name] = resource.model_copy(update={"delivery": delivery})
    return definition.model_copy(update={"resources": resources})


class _RoutedLag(threading.Thread):
    """Reads the dirty topic from its end: commit → routed (enqueued_ms - source_ts_ms), and
    the router's share (enqueued_ms - the source event's Kafka timestamp)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(name="routed-lag", daemon=True)
        self.samples: list[int] = []
        self.router_samples: list[int] = []
        self.done = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-lag-{_tag()}",
                "enable.auto.commit": False,
                "fetch.queue.backoff.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])

    def run(self) -> None:
        try:
            while not self.done.is_set():
                for message in self._consumer.consume(CONSUME_BATCH, 0.2):
                    if message.error() is not None:
                        continue
                    key = decode_dirty(message.value() or b"")
                    cause = key.cause
                    if cause.op not in (None, "r") and cause.source_ts_ms and key.enqueued_ms:
                        self.samples.append(key.enqueued_ms - cause.source_ts_ms)
                        if cause.appended_ms:
                            self.router_samples.append(key.enqueued_ms - cause.appended_ms)
        finally:
            self._consumer.close()


class _SourceLag(threading.Thread):
    """Reads the source topics from their end: commit → Debezium read (the envelope's ts_ms
    minus its source.ts_ms) and Debezium read → produced (the message's timestamp minus ts_ms).

    Both come from timestamps the messages carry, so when this reads them does not matter: it
    fetches with librdkafka's default wait, as _RoutedLag does, rather than loading the local
    broker with a fetch every 10 ms (docs/local-stack.md) beside the stages it measures."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        super().__init__(name="source-lag", daemon=True)
        self.read_samples: list[int] = []
        self.produced_samples: list[int] = []
        self.done = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-source-lag-{_tag()}",
                "enable.auto.commit": False,
            }
        )
        metadata = self._consumer.list_topics(timeout=10).topics
        self._consumer.assign(
            [TopicPartition(t, p, OFFSET_END) for t in topics for p in metadata[t].partitions]
        )

    def run(self) -> None:
        try:
            while not self.done.is_set():
                for message in self._consumer.consume(CONSUME_BATCH, 0.2):
                    if message.error() is not None or not message.value():
                        continue
                    envelope = json.loads(message.value() or b"null")
                    payload = envelope.get("payload", envelope) if envelope else None
                    if not payload or payload.get("op") in (None, "r"):
                        continue
                    read_ms, source = payload.get("ts_ms"), payload.get("source") or {}
                    committed_ms = source.get("ts_ms")
                    _, produced_ms = message.timestamp()
                    if read_ms and committed_ms:
                        self.read_samples.append(read_ms - committed_ms)
                    if read_ms and produced_ms > 0:
                        self.produced_samples.append(produced_ms - read_ms)
        finally:
            self._consumer.close()


# The syncer's stages in LatencyRun.stages_ms, named once: a curve point reports them too.
WINDOW_STAGE = "dirty key -> accepted, per window (syncer)"
PROCESSING_STAGE = "  of which processing the due window (recompute, send, audit)"
RECOMPUTE_STAGE = "    recompute query, per resource"
SANDBOX_STAGE = "    the sandbox handling a request (its own log)"
AUDIT_FLUSH_STAGE = "    audit flush (the broker acknowledging a window's audit records)"
# A curve point's short name for each.
_CURVE_STAGES = {
    "dirty key -> accepted": WINDOW_STAGE,
    "processing": PROCESSING_STAGE,
    "recompute": RECOMPUTE_STAGE,
    "sandbox": SANDBOX_STAGE,
    "audit flush": AUDIT_FLUSH_STAGE,
}


@dataclass(frozen=True)
class LatencyPlan:
    """One latency run: its state directory's name; ``fetch_wait_ms``, the consumers'
    fetch.wait.max.ms (0: reach-sync's default); ``rate``, operations/s (0: --latency-rate);
    ``curve``: also each --latency-curve rate, one after another on the same stack
    (--latency-curve-same-stack, ``_curve``)."""

    name: str = "latency"
    fetch_wait_ms: int = 0
    rate: float = 0.0
    curve: bool = False


def measure_latency(args: argparse.Namespace, state: Path, plan: LatencyPlan) -> LatencyRun:
    """The latency run ``plan`` says, in this process (``measure_apart``: in one of its own)."""
    name, fetch_wait_ms, rate = plan.name, plan.fetch_wait_ms, plan.rate
    options = StackOptions(
        state_dir=state / name,
        with_debezium=True,
        debezium_schemas=args.schemas,
        seed_customers=args.latency_customers,
        seed_transactions=3 * args.latency_customers,
        topic_prefix=TOPIC_PREFIX,
    )
    with LocalStack(options) as stack:
        assert stack.endpoints is not None
        endpoints = stack.endpoints
        base, _ = _definition(endpoints, _tag())
        window_ms = args.latency_window_ms or base.resources["transactions"].delivery.window_ms
        definition = _realtime(base, window_ms, args.latency_batch_over)
        if fetch_wait_ms:
            kafka = definition.source.kafka
            settings = {**kafka.consumer_settings, "fetch.wait.max.ms": fetch_wait_ms}
            source = definition.source.model_copy(
                update={"kafka": kafka.model_copy(update={"consumer_settings": settings})}
            )
            definition = definition.model_copy(update={"source": source})
        stats, stop = ServiceStats(), threading.Event()
        pipeline = threading.Thread(
            target=run_service, args=(definition, stop), kwargs={"stats": stats}, name="reach-sync"
        )
        snapshot_rows = options.seed_customers + options.seed_transactions
        started = time.monotonic()
        with _counting_queries() as queries:
            pipeline.start()
            try:
                synced = _wait_quiet(stats, queries, snapshot_rows, IDLE_S, SNAPSHOT_TIMEOUT_S)
                if synced is None:
                    raise SystemExit(f"latency: the snapshot was not synced: {_progress(stats)}")
                snapshot_s = time.monotonic() - started - IDLE_S
                _log(f"latency: snapshot of {snapshot_rows:,} rows synced in {snapshot_s:.1f} s")
                stats.syncer.latencies_ms.clear()
                stats.syncer.own_latencies_ms.clear()
                before = _syncer_counts(stats.syncer)
                lag = _RoutedLag(
                    endpoints.bootstrap_servers,
                    definition.topics.dirty,
                    definition.topics.dirty_partitions,
                )
                lag.start()
                source_lag = _SourceLag(
                    endpoints.bootstrap_servers,
                    [f"{TOPIC_PREFIX}.{t}" for t in ("public.customers", "public.transactions")],
                )
                source_lag.start()
                stats.syncer.window_latencies_ms.clear()
                queries.process_ms.clear()
                queries.recompute_ms.clear()
                queries.audit_flush_ms.clear()
                first_request = _sandbox_requests(endpoints, 0)[1]
                with cpu_during(_meter(endpoints, load=True)) as cpu, gc_during() as gc_time:
                    load = _run_load(args, endpoints.postgres_dsn, rate)
                    quiet = _wait_quiet(stats, queries, 0, IDLE_S, CATCH_UP_TIMEOUT_S)
                caught_up = quiet is not None
                if not caught_up:
                    _log(f"latency: not caught up {CATCH_UP_TIMEOUT_S:.0f} s after the load")
                lag.done.set()
                lag.join(5)
                source_lag.done.set()
                source_lag.join(5)
                after = _syncer_counts(stats.syncer)
                latencies = list(stats.syncer.latencies_ms)
                own = list(stats.syncer.own_latencies_ms)
                windows = list(stats.syncer.window_latencies_ms)
                processing, recomputes = list(queries.process_ms), list(queries.recompute_ms)
                flushes = list(queries.audit_flush_ms)
                handled = _sandbox_requests(endpoints, first_request)[0]
                points = _curve(args, endpoints, stats, queries) if plan.curve else []
            finally:
                stop.set()
                pipeline.join(PIPELINE_STOP_S)
        if stats.router_error is not None:
            raise SystemExit(f"latency: the router stopped: {stats.router_error}")
    return LatencyRun(
        curve=points,
        latencies_ms=latencies,
        routed_ms=lag.samples,
        own_ms=own,
        stages_ms={
            "commit -> Debezium read": source_lag.read_samples,
            "Debezium read -> source event produced": source_lag.produced_samples,
            "source event -> dirty key (router)": lag.router_samples,
            WINDOW_STAGE: windows,
            PROCESSING_STAGE: processing,
            RECOMPUTE_STAGE: recomputes,
            SANDBOX_STAGE: handled,
            AUDIT_FLUSH_STAGE: flushes,
        },
        load=load,
        window_ms=window_ms,
        batch_over=definition.resources["transactions"].delivery.batch_over,
        snapshot_rows=snapshot_rows,
        snapshot_s=snapshot_s,
        syncer={k: after[k] - before[k] for k in after},
        caught_up=caught_up,
        cpu=cpu.usage,
        gc=gc_time,
    )


def latency_with_curve(
    args: argparse.Namespace, state: Path, fetch_wait_ms: int = 0, name: str = "latency"
) -> LatencyRun:
    """The latency run at --latency-rate, then each --latency-curve rate: each in a process and
    on a stack of its own (``measure_apart``), unless --latency-curve-same-stack."""
    same_stack = args.latency_curve_same_stack
    run = measure_apart(args, state, LatencyPlan(name, fetch_wait_ms, curve=same_stack))
    if not same_stack:
        run.curve = [
            _run_point(
                measure_apart(args, state, LatencyPlan(f"{name}-at-{r:g}", fetch_wait_ms, r)), r
            )
            for r in args.latency_curve
        ]
    return run


def measure_apart(args: argparse.Namespace, state: Path, plan: LatencyPlan) -> LatencyRun:
    """``measure_latency`` in a fresh process. reach-sync runs inside the measuring process,
    and a run leaves its Kafka clients behind on the local stack (consumer/kafka.py,
    ``release_consumer``: they are never closed, and their threads go on waking up); in one
    process, each later run paid for all the earlier ones (docs/benchmarks.md, "The local
    broker slows down as it fills")."""
    context = get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_measure_in_child,
        args=(send, args, state, plan),
        name=f"bench-{plan.name}",
    )
    child.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        raise SystemExit(f"{plan.name}: its process ended without a result") from None
    finally:
        child.join(PIPELINE_STOP_S)
    if isinstance(outcome, BaseException):
        raise outcome
    if not isinstance(outcome, LatencyRun):
        raise SystemExit(f"{plan.name}: its process sent {type(outcome).__name__}")
    return outcome


def _measure_in_child(send: Any, args: argparse.Namespace, state: Path, plan: LatencyPlan) -> None:
    """The measuring process: tuned as `reach-sync run` is, it sends its LatencyRun (or what it
    raised) and ends with ``os._exit``, so that no destructor of a left-behind consumer sends a
    LeaveGroup (consumer/kafka.py, ``abandoned_consumers``)."""
    outcome: LatencyRun | BaseException
    try:
        if not args.default_gc:
            tune_gc()
        outcome = measure_latency(args, state, plan)
    except BaseException as exc:  # sent to the parent, which raises it
        outcome = exc
    try:
        send.send(outcome)
    except Exception:  # an exception that does not pickle: its text at least
        send.send(SystemExit(f"{plan.name}: {outcome!r}"))
    send.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_point(run: LatencyRun, rate: float) -> dict[str, Any]:
    """One rate of the curve, measured in a run of its own."""
    return _curve_point(
        rate, run.load, run.caught_up, run.latencies_ms, run.own_ms, run.stages_ms, run.cpu
    )


def _curve_point(
    rate: float,
    load: LoadStats,
    caught_up: bool,
    latencies: Sequence[int],
    own: Sequence[int],
    stages: Mapping[str, Sequence[int]],
    cpu: CpuUsage | None,
) -> dict[str, Any]:
    """A curve point: percentiles of commit -> accepted, of reach-sync's share (``own``) and of
    the syncer's stages (``_CURVE_STAGES``, by their names in ``stages``), and the CPU."""
    shares = {short: _percentiles(list(stages[name])) for short, name in _CURVE_STAGES.items()}
    return {
        "target_ops_per_s": rate,
        "achieved_ops_per_s": round(load.rate, 1),
        "commit_to_accepted_ms": _percentiles(list(latencies)),
        "caught_up": caught_up,
        "stages_ms": {"appended -> accepted": _percentiles(list(own)), **shares},
        "cpu": None if cpu is None else cpu.to_json(),
    }


def _sandbox_requests(endpoints: StackEndpoints, after_seq: int) -> tuple[list[int], int]:
    """The sandbox's own handling time (ms) of each request it logged after ``after_seq``, and
    the last sequence number it logged."""
    headers = {"authorization": f"Bearer {endpoints.sandbox_admin_token}"}
    durations: list[int] = []
    with httpx.Client(base_url=endpoints.sandbox_url, headers=headers, timeout=30) as http:
        while True:
            params = {"afterSeq": after_seq, "limit": 1000, "pathPrefix": "/api/"}
            answer = http.get("/_admin/requests", params=params)
            rows = answer.raise_for_status().json()["requests"]
            if not rows:
                return durations, after_seq
            durations += [round(row["durationMs"]) for row in rows]
            after_seq = rows[-1]["seq"]


def _syncer_counts(stats: SyncerStats) -> dict[str, int]:
    return {k: v for k, v in vars(stats).items() if isinstance(v, int)}


def _curve(
    args: argparse.Namespace, endpoints: StackEndpoints, stats: ServiceStats, queries: Any
) -> list[dict[str, Any]]:
    """--latency-curve-same-stack: the same load at each rate of --latency-curve, one after
    another on the stack of the main latency run, each after the pipeline went quiet. The
    local broker's CPU per request grows with the record batches its partitions hold
    (docs/benchmarks.md, "The local broker slows down as it fills"), so later steps measure a
    slower broker; the per-step stages and CPU show it."""
    points = []
    for rate in args.latency_curve:
        syncer = stats.syncer
        for samples in (
            syncer.latencies_ms,
            syncer.own_latencies_ms,
            syncer.window_latencies_ms,
            queries.process_ms,
            queries.recompute_ms,
            queries.audit_flush_ms,
        ):
            samples.clear()
        first_request = _sandbox_requests(endpoints, 0)[1]
        with cpu_during(_meter(endpoints, load=True)) as cpu:
            load = _run_load(args, endpoints.postgres_dsn, rate)
            caught_up = _wait_quiet(stats, queries, 0, IDLE_S, CATCH_UP_TIMEOUT_S) is not None
        handled = _sandbox_requests(endpoints, first_request)[0]
        stages = {
            WINDOW_STAGE: list(syncer.window_latencies_ms),
            PROCESSING_STAGE: list(queries.process_ms),
            RECOMPUTE_STAGE: list(queries.recompute_ms),
            SANDBOX_STAGE: handled,
            AUDIT_FLUSH_STAGE: list(queries.audit_flush_ms),
        }
        points.append(
            _curve_point(
                rate,
                load,
                caught_up,
                list(syncer.latencies_ms),
                list(syncer.own_latencies_ms),
                stages,
                cpu.usage,
            )
        )
    return points


def _run_load(args: argparse.Namespace, dsn: str, rate: float = 0.0) -> LoadStats:
    """The workload generator in its own process, so it does not share this one's GIL; at
    ``rate`` operations/s (0: --latency-rate)."""
    rate = rate or args.latency_rate
    _log(
        f"latency: load at {rate:g} ops/s for {args.latency_seconds:g} s "
        f"(load average {_load()[0]:.2f})"
    )
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(
            run_load,
            dsn,
            rate,
            args.latency_seconds,
            0,
            concurrency=args.latency_concurrency,
            progress=False,
        ).result(timeout=args.latency_seconds + CATCH_UP_TIMEOUT_S)


# --- the run ----------------------------------------------------------------------------------


def _percentiles(values: list[int]) -> dict[str, float]:
    if len(values) < 2:
        return {"samples": len(values)}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": q[49],
        "p90": q[89],
        "p99": q[98],
        "max": float(max(values)),
        "samples": len(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--no-schemas", dest="schemas", action="store_false")
    parser.add_argument("--repeat", type=int, default=3, help="runs of raw/decode/router")
    parser.add_argument(
        "--no-pipeline", dest="pipeline", action="store_false", help="skip the in-process run"
    )
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the RSS run")
    parser.add_argument(
        "--no-split",
        dest="split",
        action="store_false",
        help="skip the run with router and syncer as two processes",
    )
    parser.add_argument(
        "--rss-max-seconds",
        type=float,
        default=0.0,
        help="stop the RSS child after this long even if not drained (0: until drained)",
    )
    parser.add_argument(
        "--slow-reach-ms",
        type=float,
        default=0.0,
        help="also measure peak RSS with every Reach request slowed by this much (0: skip)",
    )
    parser.add_argument(
        "--slow-reach-seconds",
        type=float,
        default=180.0,
        help="how long the slow-Reach RSS run lasts (it does not drain the backlog)",
    )
    parser.add_argument(
        "--strict-sink",
        action="store_true",
        help="measure the pipeline, RSS and split runs with the strict sandbox (default: its "
        "sink mode, which accepts batches without validating or applying them)",
    )
    parser.add_argument("--no-latency", dest="latency", action="store_false")
    parser.add_argument(
        "--latency-curve",
        type=lambda text: [float(r) for r in text.split(",") if r],
        default=[],
        metavar="RATES",
        help="also measure at each of these rates (ops/s, comma-separated), each on a stack of"
        " its own, and report the knee",
    )
    parser.add_argument(
        "--latency-curve-same-stack",
        action="store_true",
        help="measure the --latency-curve rates one after another on the main latency run's"
        " stack instead (the local broker slows down as it fills: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--latency-baseline-fetch-wait-ms",
        type=int,
        default=0,
        help="also measure latency with the consumers' fetch.wait.max.ms at this (0: skip)",
    )
    parser.add_argument("--latency-rate", type=float, default=100.0, help="operations/s")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-concurrency", type=int, default=8, help="load workers")
    parser.add_argument("--latency-customers", type=int, default=200, help="seeded (x3 sales)")
    parser.add_argument(
        "--latency-window-ms", type=int, default=0, help="customers' window (0: transactions')"
    )
    parser.add_argument(
        "--latency-batch-over",
        type=int,
        default=0,
        help="delivery.batch_over of every resource (0: as examples/shop.yaml says)",
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's default garbage collector settings instead of the ones `reach-sync"
        " run` sets (consumer/cli/process_tuning.py), for an A/B",
    )
    args = parser.parse_args(argv)
    if not args.default_gc:
        tune_gc()  # as `reach-sync run` does, so the figures are its

    results: dict[str, Any] = {"load_before": _load()}
    with tempfile.TemporaryDirectory(prefix="reach-sync-bench-") as tmp:
        state = Path(tmp)
        state.chmod(0o755)  # an unprivileged Postgres must traverse it
        _backlog_part(args, state, results)
        if args.latency:
            if args.latency_baseline_fetch_wait_ms:
                results["latency_baseline"] = latency_with_curve(
                    args, state, args.latency_baseline_fetch_wait_ms, "latency-baseline"
                )
            results["latency"] = latency_with_curve(args, state)
    results["load_after"] = _load()
    summary = _summary(args, results)
    _print_table(summary, results)
    print(json.dumps(summary))
    code = 0
    if abandoned_consumers():
        # As `reach-sync run` does: consumers released without a LeaveGroup must not get one
        # from a destructor on the way out (consumer/kafka.py).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _backlog_part(args: argparse.Namespace, state: Path, results: dict[str, Any]) -> None:
    options = StackOptions(
        state_dir=state / "backlog",
        with_debezium=False,
        seed_customers=SEED_CUSTOMERS,
        seed_transactions=SEED_TRANSACTIONS,
        topic_prefix=TOPIC_PREFIX,
    )
    started = time.perf_counter()
    with LocalStack(options) as stack:
        assert stack.endpoints is not None
        endpoints = stack.endpoints
        _log(f"backlog stack ready in {time.perf_counter() - started:.1f} s (seeded)")
        started = time.perf_counter()
        backlog = preload(endpoints.bootstrap_servers, args.events, args.schemas)
        _log(
            f"preloaded {backlog.events:,} events (avg value {backlog.avg_value_bytes:,} B) "
            f"in {time.perf_counter() - started:.1f} s: {backlog.per_topic}"
        )
        _sandbox_sink(endpoints, not args.strict_sink)
        raw, decode, routed, floor = [], [], [], []
        router_stats: RouterStats | None = None
        meter = _meter(endpoints)
        cpu: dict[str, list[CpuUsage]] = {"raw": [], "decode": [], "router": [], "floor": []}
        for run in range(args.repeat):
            with cpu_during(meter) as used:
                raw.append(measure_consume_all(endpoints.bootstrap_servers, backlog, _touch))
            cpu["raw"].append(used.usage)
            decoder = routing_decode(_definition(endpoints, _tag())[0])
            with cpu_during(meter) as used:
                decode.append(measure_consume_all(endpoints.bootstrap_servers, backlog, decoder))
            cpu["decode"].append(used.usage)
            with cpu_during(meter) as used:
                rate, router_stats = measure_router(_definition(endpoints, _tag())[0], args.events)
            cpu["router"].append(used.usage)
            routed.append(rate)
            dirty_per_event = router_stats.dirty_keys / router_stats.events
            floor_definition = _definition(endpoints, _tag())[0]
            with cpu_during(meter) as used:
                floor.append(
                    measure_floor(
                        endpoints.bootstrap_servers,
                        list(backlog.ends),
                        backlog.events,
                        routing_decode(floor_definition),  # a fresh one, as the router's
                        dirty_per_event,
                        floor_definition.topics.dirty_partitions,
                    )
                )
            cpu["floor"].append(used.usage)
            _log(
                f"run {run + 1}: raw {raw[-1]:,.0f}/s, decode {decode[-1]:,.0f}/s, "
                f"router {rate:,.0f}/s, library floor {floor[-1]:,.0f}/s "
                f"(load average {_load()[0]:.2f})"
            )
        assert router_stats is not None
        results.update(backlog=backlog, raw=raw, decode=decode, routed=routed, floor=floor)
        results["router_stats"] = router_stats
        results["cpu_ceilings"] = {name: sum(runs[1:], runs[0]) for name, runs in cpu.items()}
        if args.pipeline:
            _log(f"pipeline: run_service(role='all') on {args.events:,} events ...")
            pipeline = measure_pipeline(_definition(endpoints, _tag())[0], args.events, meter)
            results["pipeline"] = pipeline
            _log(
                f"pipeline: {pipeline.rate:,.0f} events/s over {pipeline.seconds:.1f} s "
                f"(load average {_load()[0]:.2f})"
            )
        if args.rss:
            _log("rss: `reach-sync run` as a child process on the same backlog ...")
            rss = measure_rss(
                endpoints, backlog, router_stats.dirty_keys, state, args.rss_max_seconds
            )
            results["rss"] = rss
            _log(
                f"rss: peak {rss.vm_hwm_mib:.0f} MiB, "
                f"{'drained' if rss.drained else 'not drained'} in {rss.seconds:.0f} s, "
                f"exit code {rss.exit_code}"
            )
        if args.slow_reach_ms > 0:
            _log(f"rss: `reach-sync run` on the backlog, Reach slowed by {args.slow_reach_ms:g} ms")
            with _sandbox_latency(endpoints, args.slow_reach_ms):
                slow = measure_rss(
                    endpoints, backlog, router_stats.dirty_keys, state, args.slow_reach_seconds
                )
            results["rss_slow"] = slow
            _log(
                f"rss (slow Reach): peak {slow.vm_hwm_mib:.0f} MiB after {slow.seconds:.0f} s, "
                f"{slow.dirty_committed:,} dirty keys committed"
            )
        if args.split:
            _log("split: `reach-sync run --role router` and `--role syncer` as two processes ...")
            split = measure_rss(
                endpoints,
                backlog,
                router_stats.dirty_keys,
                state,
                args.rss_max_seconds,
                roles=("router", "syncer"),
            )
            results["split"] = split
            _log(
                f"split: {split.rate:,.0f} events/s, peak {split.vm_hwm_mib:.0f} MiB (both; "
                f"router {split.vm_hwm_mib_each[0]:.0f}, syncer {split.vm_hwm_mib_each[1]:.0f}), "
                f"{'drained' if split.drained else 'not drained'} in {split.seconds:.0f} s"
            )


def _summary(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """The figures, their ratios and the targets: the JSON object of the last line."""
    backlog: Backlog = results["backlog"]
    rates = {name: statistics.median(results[key]) for name, key in _MEDIANS}
    pipeline: PipelineRun | None = results.get("pipeline")
    rss: RssRun | None = results.get("rss")
    latency: LatencyRun | None = results.get("latency")
    ratios = {
        "decode_to_raw": rates["decode"] / rates["raw"],
        "router_to_raw": rates["router"] / rates["raw"],
        "router_to_decode": rates["router"] / rates["decode"],
        # The router's libraries alone, and the router's rate against them (router.py).
        "floor_to_decode": rates["floor"] / rates["decode"],
        "router_to_floor": rates["router"] / rates["floor"],
    }
    targets: dict[str, bool | None] = {
        "router_ge_0.6x_decode": ratios["router_to_decode"] >= TARGET_ROUTER_TO_DECODE,
        "decode_ge_0.40x_raw": ratios["decode_to_raw"] >= TARGET_DECODE_TO_RAW,
        "pipeline_ge_0.10x_raw": None,
        "p99_le_250ms": None,
        "own_p99_le_window_plus_100ms": None,
        "peak_rss_le_200MiB": None,
        "source_queries_le_1_per_resource_per_window": None,
    }
    if args.slow_reach_ms > 0:
        targets["slow_reach_rss_le_200MiB"] = None
    summary: dict[str, Any] = {
        "events": backlog.events,
        "schemas": args.schemas,
        "avg_value_bytes": backlog.avg_value_bytes,
        "per_topic": backlog.per_topic,
        "partitions": PARTITIONS,
        "keys_per_table": KEYS,
        "repeat": args.repeat,
        # The sandbox's mode during the pipeline, RSS and split runs (sink: PUT /_admin/sink).
        "reach_sandbox": "strict" if args.strict_sink else "sink",
        "events_per_s": rates,
        "ratios": ratios,
        "pipeline": None,
        "peak_rss_mib": None,
        "rss_run": None,
        "latency_ms": None,
        "latency": None,
    }
    if pipeline is not None:
        syncer, queries = pipeline.syncer, pipeline.queries
        rates["pipeline"] = pipeline.rate
        ratios["pipeline_to_raw"] = pipeline.rate / rates["raw"]
        targets["pipeline_ge_0.10x_raw"] = ratios["pipeline_to_raw"] >= TARGET_PIPELINE_TO_RAW
        targets["source_queries_le_1_per_resource_per_window"] = (
            queries.max_per_resource <= TARGET_QUERIES_PER_RESOURCE_PER_WINDOW
            and syncer.recomputes <= queries.attempts * pipeline.resources
        )
        summary["pipeline"] = {
            "seconds": round(pipeline.seconds, 1),
            "router": {k: v for k, v in asdict(pipeline.router).items() if k != "ignored"},
            "syncer": {k: v for k, v in asdict(syncer).items() if not k.endswith("latencies_ms")},
            "resources": pipeline.resources,
            "window_attempts": queries.attempts,
            "recomputes_per_window": round(syncer.recomputes / max(1, queries.attempts), 3),
            "max_queries_per_resource_per_window": queries.max_per_resource,
            "max_queries_per_window": queries.max_per_window,
            "windows_by_queries": dict(queries.per_window),
            "gc": None if pipeline.gc is None else pipeline.gc.to_json(),
        }
    split: RssRun | None = results.get("split")
    if split is not None:
        if split.drained:
            rates["pipeline_split"] = split.rate
            ratios["pipeline_split_to_raw"] = split.rate / rates["raw"]
        summary["split_run"] = {
            "events_per_s": round(split.rate),
            "vm_hwm_mib_both": round(split.vm_hwm_mib, 1),
            "vm_hwm_mib_router_syncer": split.vm_hwm_mib_each,
            "seconds": round(split.seconds, 1),
            "drained": split.drained,
            "exit_code": split.exit_code,
        }
    if rss is not None:
        peak = rss.vm_hwm_mib
        targets["peak_rss_le_200MiB"] = peak <= TARGET_RSS_MIB
        if rss.drained:
            rates["pipeline_child"] = rss.rate
        summary["peak_rss_mib"] = round(peak, 1)
        summary["rss_run"] = {
            "vm_hwm_mib": round(rss.vm_hwm_mib, 1),
            "events_per_s": round(rss.rate),
            "seconds": round(rss.seconds, 1),
            "drained": rss.drained,
            "routed": rss.routed,
            "dirty_committed": rss.dirty_committed,
            "dirty_expected": rss.expected_dirty,
            "exit_code": rss.exit_code,
        }
    slow: RssRun | None = results.get("rss_slow")
    if slow is not None:
        targets["slow_reach_rss_le_200MiB"] = slow.vm_hwm_mib <= TARGET_RSS_MIB
        summary["rss_slow_reach"] = {
            "reach_latency_ms": args.slow_reach_ms,
            "vm_hwm_mib": round(slow.vm_hwm_mib, 1),
            "seconds": round(slow.seconds, 1),
            "routed": slow.routed,
            "dirty_committed": slow.dirty_committed,
            "exit_code": slow.exit_code,
        }
    if latency is not None:
        lat = _percentiles(latency.latencies_ms)
        if "p99" in lat:
            targets["p99_le_250ms"] = lat["p99"] <= TARGET_P99_MS
        own = _percentiles(latency.own_ms)
        if "p99" in own:
            bound = latency.window_ms + OWN_SHARE_MARGIN_MS
            targets["own_p99_le_window_plus_100ms"] = own["p99"] <= bound
        load = latency.load
        summary["latency_ms"] = lat
        summary["latency"] = {
            "commit_to_routed_ms": _percentiles(latency.routed_ms),
            "appended_to_accepted_ms": _percentiles(latency.own_ms),
            "curve": latency.curve,
            # The highest rate measured whose p99 stayed within 1 s, the main rate's run counted
            # with the curve's (None: none did).
            "knee_ops_per_s": max(
                (
                    p["target_ops_per_s"]
                    for p in [
                        *latency.curve,
                        {
                            "target_ops_per_s": args.latency_rate,
                            "caught_up": latency.caught_up,
                            "commit_to_accepted_ms": lat,
                        },
                    ]
                    if p["caught_up"] and p["commit_to_accepted_ms"].get("p99", 1e9) <= KNEE_P99_MS
                ),
                default=None,
            ),
            "stages_ms": {k: _percentiles(v) for k, v in latency.stages_ms.items()},
            "customers_window_ms": latency.window_ms,
            "batch_over": latency.batch_over,
            "target_ops_per_s": args.latency_rate,
            "achieved_ops_per_s": round(load.rate, 1),
            "commits_per_s": round(load.commits / max(load.elapsed_s, 1e-9), 1),
            "dropped_slots": load.dropped,
            "syncer": latency.syncer,
            "caught_up": latency.caught_up,
            "snapshot_rows": latency.snapshot_rows,
            "snapshot_s": round(latency.snapshot_s, 1),
            "gc": None if latency.gc is None else latency.gc.to_json(),
        }
    baseline: LatencyRun | None = results.get("latency_baseline")
    if baseline is not None:
        base_lat = _percentiles(baseline.latencies_ms)
        now_p99 = (summary.get("latency_ms") or {}).get("p99")
        summary["latency_baseline"] = {
            "fetch_wait_ms": args.latency_baseline_fetch_wait_ms,
            "latency_ms": base_lat,
            "commit_to_routed_ms": _percentiles(baseline.routed_ms),
            "p99_ratio": round(now_p99 / base_lat["p99"], 3)
            if now_p99 and base_lat.get("p99")
            else None,
        }
    summary["cpu"] = {part: usage.to_json() for part, usage in _cpu_parts(results).items()}
    summary["events_per_s"] = {k: round(v) for k, v in rates.items()}
    summary["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    before, after = results["load_before"], results["load_after"]
    summary["load_average"] = {"before": before, "after": after, "cpus": os.cpu_count()}
    summary["targets"] = targets
    summary["all_targets_met"] = all(v is True for v in targets.values())
    return summary


def _cpu_parts(results: dict[str, Any]) -> dict[str, CpuUsage]:
    """CPU per measured part (raw, decode, router, floor: summed over --repeat), reach-sync
    first."""
    parts: dict[str, CpuUsage | None] = dict(results.get("cpu_ceilings") or {})
    for part, key in _CPU_RUNS:
        run = results.get(key)
        parts[part] = run.cpu if run is not None else None
    ordered = {}
    for part, usage in parts.items():
        if usage is not None:
            first = {k: v for k, v in usage.seconds.items() if k == "reach-sync"}
            seconds = {**first, **usage.seconds}
            ordered[part] = CpuUsage(seconds, usage.wall_s, usage.machine_s, usage.cpus)
    return ordered


def _print_cpu(summary: dict[str, Any]) -> None:
    repeat = summary["repeat"]
    print(
        "  CPU seconds per process group during each part (bench/cpu.py; 'machine' is every "
        "process's, from /proc/stat):"
    )
    for part, figures in summary["cpu"].items():
        usage = CpuUsage(
            figures["cpu_s"], figures["wall_s"], figures["machine_busy_s"], figures["cpus"]
        )
        runs = f" ({repeat} runs)" if part in _MEDIAN_PARTS and repeat > 1 else ""
        print(f"    cpu during {part}{runs}: {format_usage(usage)}")


def _print_table(summary: dict[str, Any], results: dict[str, Any]) -> None:
    rates, ratios = summary["events_per_s"], summary["ratios"]
    block = "with" if summary["schemas"] else "without"
    print(
        f"{summary['events']:,} Debezium events {block} the schema block (avg value "
        f"{summary['avg_value_bytes']:,} B) in {', '.join(summary['per_topic'])} "
        f"({PARTITIONS} partitions each, lz4), {KEYS:,} keys per table (Zipf); raw, decode, "
        f"router and floor: medians of {summary['repeat']}"
    )
    for name, label in _LABELS:
        if name in rates:
            rate = rates[name]
            print(f"  {label:<46} {rate:>9,} events/s  {rate / rates['raw']:5.3f} of raw")
    line = (
        f"  router / typed decode {ratios['router_to_decode']:.3f} "
        f"(target >= {TARGET_ROUTER_TO_DECODE:.1f}); typed decode / raw "
        f"{ratios['decode_to_raw']:.3f} (target >= {TARGET_DECODE_TO_RAW:.2f})"
    )
    if "pipeline_to_raw" in ratios:
        line += (
            f"; pipeline / raw {ratios['pipeline_to_raw']:.3f} "
            f"(target >= {TARGET_PIPELINE_TO_RAW:.2f})"
        )
    if "pipeline_split_to_raw" in ratios:
        line += f"; split / raw {ratios['pipeline_split_to_raw']:.3f}"
    print(line)
    print(
        f"  router's library floor / typed decode {ratios['floor_to_decode']:.3f} (the router's "
        f"ratio with no Python of its own); router / floor {ratios['router_to_floor']:.3f}"
    )
    print(f"  Reach sandbox for the pipeline, RSS and split runs: {summary['reach_sandbox']} mode")
    pipeline: PipelineRun | None = results.get("pipeline")
    if pipeline is not None:
        _print_pipeline(pipeline)
    rss: RssRun | None = results.get("rss")
    if rss is not None:
        print(
            f"  `reach-sync run` child, same backlog: peak RSS (VmHWM) "
            f"{summary['peak_rss_mib']:.0f} MiB (target <= {TARGET_RSS_MIB:.0f} MiB)"
        )
        state = "drained" if rss.drained else "stopped before draining"
        print(
            f"    {state} after {rss.seconds:.1f} s: {rss.routed:,} of {summary['events']:,} "
            f"events routed, {rss.dirty_committed:,} of {rss.expected_dirty:,} dirty keys done; "
            f"exit code {rss.exit_code}"
        )
        if rss.exit_code:
            print("    its last lines: " + rss.log_tail.splitlines()[-1][:150])
    slow = summary.get("rss_slow_reach")
    if slow is not None:
        print(
            f"  the same with Reach slowed by {slow['reach_latency_ms']:g} ms: peak RSS "
            f"{slow['vm_hwm_mib']:.0f} MiB after {slow['seconds']:.0f} s "
            f"(target <= {TARGET_RSS_MIB:.0f} MiB), {slow['dirty_committed']:,} dirty keys done"
        )
    if summary["latency"] is not None:
        _print_latency(summary)
    if summary.get("latency_baseline") is not None:
        base = summary["latency_baseline"]
        print(
            f"  baseline, fetch.wait.max.ms {base['fetch_wait_ms']}: commit -> accepted "
            f"{_format_percentiles(base['latency_ms'])}; commit -> routed "
            f"{_format_percentiles(base['commit_to_routed_ms'])}; p99 ratio (now / baseline) "
            f"{base['p99_ratio']}"
        )
    _print_cpu(summary)
    load = summary["load_average"]
    print(
        f"  machine: {load['cpus']} CPUs, 1-min load average {load['before'][0]:.2f} before, "
        f"{load['after'][0]:.2f} after"
    )
    print("  targets: " + ", ".join(f"{k} {v}" for k, v in summary["targets"].items()))


def _print_pipeline(pipeline: PipelineRun) -> None:
    router, syncer, queries = pipeline.router, pipeline.syncer, pipeline.queries
    print(
        f"  pipeline run: {pipeline.seconds:.1f} s; router {router.events:,} events -> "
        f"{router.dirty_keys:,} dirty keys (ignored {dict(router.ignored)}, dead-lettered "
        f"{router.dead_lettered}, retries {router.retries})"
    )
    print(
        f"    syncer {syncer.dirty_keys:,} dirty keys -> {syncer.windows:,} windows, "
        f"{syncer.entities:,} entities ({syncer.entities / max(1, syncer.windows):.0f}/window); "
        f"sent {syncer.sent:,}, skipped unchanged {syncer.skipped:,}, deleted {syncer.deleted:,}, "
        f"dead-lettered {syncer.dead_lettered}, retries {syncer.retries}"
    )
    print(
        f"    source queries: {syncer.recomputes:,} recomputes in {queries.attempts:,} window "
        f"attempts ({syncer.recomputes / max(1, queries.attempts):.2f}/window, "
        f"{pipeline.resources} resources); max {queries.max_per_resource} per resource and "
        f"{queries.max_per_window} per window; windows by query count {dict(queries.per_window)}"
    )
    if pipeline.gc is not None:
        print(f"    garbage collector: {describe_gc(pipeline.gc.to_json())}")


def _print_latency(summary: dict[str, Any]) -> None:
    latency = summary["latency"]
    print(
        f"  latency, both resources real time (customers' window "
        f"{latency['customers_window_ms']} ms, batch_over {latency['batch_over']}), "
        f"after a {latency['snapshot_rows']:,}-row "
        f"snapshot synced in {latency['snapshot_s']:.1f} s:"
    )
    print(
        f"    commit -> accepted {_format_percentiles(summary['latency_ms'])} "
        f"(target p99 <= {TARGET_P99_MS:.0f})"
    )
    print(f"    commit -> routed   {_format_percentiles(latency['commit_to_routed_ms'])}")
    print(
        f"    source appended -> accepted (reach-sync's share) "
        f"{_format_percentiles(latency['appended_to_accepted_ms'])} (target p99 <= window "
        f"{latency['customers_window_ms']} + {OWN_SHARE_MARGIN_MS:.0f})"
    )
    for stage, figures in latency["stages_ms"].items():
        print(f"      {stage}: {_format_percentiles(figures)}")
    for point in latency["curve"]:
        print(
            f"    at {point['target_ops_per_s']:g} ops/s "
            f"({point['achieved_ops_per_s']:g} achieved): commit -> accepted "
            f"{_format_percentiles(point['commit_to_accepted_ms'])}"
            + ("" if point["caught_up"] else " (not caught up: lower bounds)")
        )
        stages = point.get("stages_ms", {})
        if stages:
            print(
                "      p50/p99 ms: "
                + ", ".join(
                    f"{name} {f.get('p50', 0):.0f}/{f.get('p99', 0):.0f}"
                    for name, f in stages.items()
                )
            )
        cpu = point.get("cpu")
        if cpu:
            spent = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu["cpu_s"].items())
            busy, wall = cpu["machine_busy_s"], cpu["wall_s"]
            print(
                f"      cpu: {spent}; machine {busy:.1f} s busy of {cpu['cpus']}\u00d7{wall:.1f} s"
            )
    if latency["curve"]:
        print(f"    knee (highest rate with p99 <= 1 s): {latency['knee_ops_per_s']} ops/s")
    print(
        f"    load: {latency['achieved_ops_per_s']:,} ops/s achieved of "
        f"{latency['target_ops_per_s']:g} ({latency['commits_per_s']:,} commits/s, "
        f"{latency['dropped_slots']} slots dropped); caught up after it: {latency['caught_up']}"
    )
    print(f"    syncer during the load: {latency['syncer']}")
    gc_time = latency["gc"]
    if gc_time is not None:
        print(f"    garbage collector during the load: {describe_gc(gc_time)}")


_MEDIANS = (("raw", "raw"), ("decode", "decode"), ("router", "routed"), ("floor", "floor"))
_MEDIAN_PARTS = tuple(name for name, _ in _MEDIANS)
# (part, key in results) of the runs that carry their own CpuUsage.
_CPU_RUNS = (
    ("pipeline", "pipeline"),
    ("rss", "rss"),
    ("rss_slow_reach", "rss_slow"),
    ("split", "split"),
    ("latency", "latency"),
    ("latency_baseline", "latency_baseline"),
)
_LABELS = (
    ("raw", "raw consume (consume(1000), touch)"),
    ("decode", "typed decode (consume + router decoder)"),
    ("router", "router (to acked dirty keys + commits)"),
    ("floor", "router's library floor (no Python of its own)"),
    ("pipeline", "whole pipeline (router + syncer -> sandbox)"),
    ("pipeline_child", "the same, `reach-sync run` child (cross-check)"),
    ("pipeline_split", "the same, `--role router` + `--role syncer` processes"),
)


def _format_percentiles(p: dict[str, float]) -> str:
    if "p50" not in p:
        return f"({p['samples']} samples)"
    return (
        f"p50 {p['p50']:6.0f} ms  p90 {p['p90']:6.0f} ms  p99 {p['p99']:6.0f} ms  "
        f"max {p['max']:6.0f} ms  ({p['samples']:,} samples)"
    )


if __name__ == "__main__":
    sys.exit(main())
