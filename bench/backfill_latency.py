"""Live changes during a backfill: their latency beside the same load without one, in one run.

The issue: ``reach-sync backfill`` must not let history queue ahead of live changes for minutes.
A backfill writes its dirty keys to the topic the router writes and pauses while the syncer's lag
there is over ``--max-lag`` (2,000 by default); this measures what a live change waits meanwhile.

Set-up: a LocalStack with Debezium in ``snapshot.mode: no_data`` (changes only: history comes
from the backfill alone), the shop seeded with ``--customers`` customers (100,000) and
``--transactions`` sales; reach-sync's ``run_service`` in this process on examples/shop.yaml
with its own group, topics and Redis prefix (bench/pipeline.py's ``_definition``), both resources
in real-time mode as pipeline.py's latency part runs them (``_realtime``: customers' window as
transactions', 100 ms). The workload generator (devstack/reach_devstack/load.py) runs in its own
process at ``--rate`` operations/s, in runs of ``LOAD_CHUNK_S`` back to back so that a phase can
end when its backfill does. After a warm-up load (both stages assigned, connections open):

- A, baseline: the load for ``--seconds``;
- B, backfill: the load, and after ``LEAD_S`` ``reach-sync backfill --resource customers
  --no-wait`` as a child process (default ``--max-lag``); the phase lasts until the syncer has
  committed past every key the backfill wrote (its checkpoint's offsets, as ``backfill`` without
  ``--no-wait`` waits for them), and the live figures are those of that span;
- C, ``--unpaced``: B again with ``--max-lag`` 10^9, on a fresh reach-sync (new group, topics
  and Redis prefix: an empty last-sent store, so every customer is sent again as in B; its router
  first catches up on the source topics, and the phase starts once it is idle).

Live latency is source commit -> window done, from ``SyncerStats.latencies_ms`` (drained into
this bench every ``SAMPLE_S`` with the time it was taken, so each sample belongs to the phase it
finished in). It counts only causes with a source commit time (``Window.latencies_ms``: cdc
changes, not snapshot reads); backfill keys carry none, so they add no samples, and an entity
whose window holds both a live change and a backfill key counts once, from its live change.
Beside it, commit -> routed (pipeline.py's ``_RoutedLag``), the syncer's lag as the backfill
sees it (``SyncerPosition.lag``), and the backfill's keys/s.

Prints a table, then one JSON object on the last line: the figures and the ratios to the
baseline measured in the same run. It asserts nothing.

    .venv/bin/python bench/backfill_latency.py                       # 100,000 customers
    .venv/bin/python bench/backfill_latency.py --customers 5000 --seconds 10
    .venv/bin/python bench/backfill_latency.py --unpaced
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Protocol, cast

from reach_devstack.load import LoadStats, run_load
from reach_devstack.stack import LocalStack, StackEndpoints, StackOptions
from redis.asyncio import Redis

from consumer.backfill.checkpoint import CheckpointStore
from consumer.backfill.run import DEFAULT_MAX_LAG
from consumer.backfill.scope import BackfillScope
from consumer.backfill.syncer_position import SyncerPosition
from consumer.config import SyncDefinition
from consumer.kafka import abandoned_consumers
from consumer.service import ServiceStats, run_service

# bench/pipeline.py's helpers, next to this file (run as `python bench/backfill_latency.py`).
# Imported by name rather than with `from pipeline import ...`: pipeline.py is outside mypy's
# configured packages and not strict-clean, and a static import would make mypy check it here.
# The names used are declared with their types below.
_pipeline: Any = importlib.import_module("pipeline")


class _RoutedLag(Protocol):
    samples: list[int]
    done: threading.Event

    def start(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


EXAMPLE: Path = _pipeline.EXAMPLE
ROOT: Path = _pipeline.ROOT
TOPIC_PREFIX: str = _pipeline.TOPIC_PREFIX
_definition: Callable[[StackEndpoints, str], tuple[SyncDefinition, dict[str, str]]] = (
    _pipeline._definition
)
_realtime: Callable[[SyncDefinition, int, int], SyncDefinition] = _pipeline._realtime
_percentiles: Callable[[list[int]], dict[str, float]] = _pipeline._percentiles
_format_percentiles: Callable[[dict[str, float]], str] = _pipeline._format_percentiles
_moving: Callable[[ServiceStats], tuple[int, ...]] = _pipeline._moving
_progress: Callable[[ServiceStats], str] = _pipeline._progress
_syncer_counts: Callable[[Any], dict[str, int]] = _pipeline._syncer_counts
_tag: Callable[[], str] = _pipeline._tag
_RoutedLagThread: Callable[[str, str, int], _RoutedLag] = _pipeline._RoutedLag

RESOURCE = "customers"
# The load runs in chunks of this long, back to back, until its phase ends.
LOAD_CHUNK_S = 3.0
# Live load before the backfill starts, so that it starts into a flowing pipeline.
LEAD_S = 2.0
WARMUP_S = 5.0
# Idle: nothing moved for this long and the syncer's lag is 0.
IDLE_S = 3.0
IDLE_TIMEOUT_S = 600.0
SAMPLE_S = 0.2
LAG_POLL_S = 1.0
PROGRESS_S = 15.0
BACKFILL_TIMEOUT_S = 3600.0
PIPELINE_STOP_S = 90.0
UNPACED_MAX_LAG = 1_000_000_000
# A sample's commit time is taken as (when it was drained - its latency): up to SAMPLE_S late.
CLOCK_SLACK_S = 1.0
_WRITTEN = re.compile(r"([\d,]+) by this run")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _loadavg() -> float:
    return os.getloadavg()[0]


# --- the live load, in its own process --------------------------------------------------------


def _load_until(
    dsn: str, rate: float, concurrency: int, stop: EventType, out: Any, chunk_s: float
) -> None:
    """run_load in chunks until ``stop``; the summed LoadStats go to ``out`` (a Queue)."""
    total = LoadStats()
    chunk = 0
    while not stop.is_set():
        stats = run_load(dsn, rate, chunk_s, 1000 + chunk, concurrency=concurrency, progress=False)
        chunk += 1
        total.done.update(stats.done)
        total.missed.update(stats.missed)
        total.conflicts.update(stats.conflicts)
        total.commits += stats.commits
        total.reconnects += stats.reconnects
        total.dropped += stats.dropped
        total.elapsed_s += stats.elapsed_s
    out.put(total)


class LiveLoad:
    """The workload generator in a spawned process (not this one's GIL), until ``stop()``."""

    def __init__(self, dsn: str, rate: float, concurrency: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._out: Any = context.Queue()
        self._process = context.Process(
            target=_load_until,
            args=(dsn, rate, concurrency, self._stop, self._out, LOAD_CHUNK_S),
            name="live-load",
            daemon=True,
        )
        self._process.start()

    def stop(self) -> LoadStats:
        self._stop.set()
        stats = cast(LoadStats, self._out.get(timeout=LOAD_CHUNK_S + 60))
        self._process.join(30)
        return stats


# --- reach-sync in this process, and what it is sampled for -----------------------------------


@dataclass
class Running:
    definition: SyncDefinition
    env: dict[str, str]
    stats: ServiceStats
    # (monotonic time drained, latency ms) of every source commit -> done sample.
    latencies: list[tuple[float, int]] = field(default_factory=list)
    # (monotonic time, the syncer's lag on the dirty topic), every LAG_POLL_S.
    lags: list[tuple[float, int]] = field(default_factory=list)
    routed: _RoutedLag | None = None

    def latencies_between(self, start: float, end: float, since: float) -> tuple[list[int], int]:
        """The samples done between ``start`` and ``end`` of changes committed after ``since``
        (less the clock slack), and how many done then were older: a fresh router's catch-up."""
        done = [(t, ms) for t, ms in list(self.latencies) if start <= t <= end]
        kept = [ms for t, ms in done if t - ms / 1000 >= since - CLOCK_SLACK_S]
        return kept, len(done) - len(kept)

    def lags_between(self, start: float, end: float) -> list[int]:
        return [lag for t, lag in list(self.lags) if start <= t <= end]

    def last_lag(self) -> int | None:
        return self.lags[-1][1] if self.lags else None


def _sample(running: Running, stop: threading.Event) -> None:
    """Drain the syncer's latency samples (a bounded deque) with their time; read its lag."""
    position = SyncerPosition(running.definition)
    queue = running.stats.syncer.latencies_ms
    next_lag = 0.0
    try:
        while not stop.wait(SAMPLE_S):
            now = time.monotonic()
            while queue:
                running.latencies.append((now, queue.popleft()))
            if now >= next_lag:
                next_lag = now + LAG_POLL_S
                try:
                    running.lags.append((time.monotonic(), asyncio.run(position.lag())))
                except Exception as exc:  # a slow broker answer: the next poll tries again
                    _log(f"lag: {exc}")
    finally:
        position.close()


@contextmanager
def reach_sync(endpoints: StackEndpoints) -> Iterator[Running]:
    """run_service on examples/shop.yaml (own group, topics, Redis prefix), both resources in
    real time, with the sampler; stopped when the block ends."""
    base, env = _definition(endpoints, _tag())
    window_ms = base.resources["transactions"].delivery.window_ms
    definition = _realtime(base, window_ms, 0)
    running = Running(definition, env, ServiceStats())
    stop = threading.Event()
    service = threading.Thread(
        target=run_service,
        args=(definition, stop),
        kwargs={"stats": running.stats},
        name="reach-sync",
    )
    sampler = threading.Thread(target=_sample, args=(running, stop), name="sampler")
    service.start()
    sampler.start()
    try:
        yield running
    finally:
        if running.routed is not None:
            running.routed.done.set()
            running.routed.join(5)
        stop.set()
        service.join(PIPELINE_STOP_S)
        sampler.join(30)
    if running.stats.router_error is not None:
        raise SystemExit(f"the router stopped: {running.stats.router_error}")


def wait_idle(running: Running, what: str, min_routed: int = 0) -> float:
    """Until the router routed at least ``min_routed`` source events, nothing moved for IDLE_S
    and the syncer's lag is 0; the seconds it took."""
    started = time.monotonic()
    stats = running.stats
    last_state, last_change = _moving(stats), started
    next_progress = started + PROGRESS_S
    while time.monotonic() - started < IDLE_TIMEOUT_S:
        time.sleep(SAMPLE_S)
        if stats.router_error is not None:
            raise SystemExit(f"{what}: the router stopped: {stats.router_error}")
        now = time.monotonic()
        state = _moving(stats)
        if state != last_state:
            last_state, last_change = state, now
        if now >= next_progress:
            next_progress += PROGRESS_S
            _log(f"  {what}: {_progress(stats)}; lag {running.last_lag()}")
        routed = stats.router.dirty_keys if stats.router else 0
        events = stats.router.events if stats.router else 0
        if (
            now - last_change >= IDLE_S
            and events >= min_routed
            and stats.syncer.dirty_keys >= routed
            and running.last_lag() == 0
        ):
            return now - started
    raise SystemExit(f"{what}: not idle after {IDLE_TIMEOUT_S:.0f} s: {_progress(stats)}")


# --- the phases -------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    latencies_ms: list[int]
    routed_ms: list[int]
    load: LoadStats
    syncer: dict[str, int]
    lags: list[int]
    # Samples done in the phase of changes committed before its load began (excluded).
    stale: int = 0
    backfill: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        load = self.load
        lags = self.lags or [0]
        return {
            "seconds": round(self.seconds, 1),
            "latency_ms": _percentiles(self.latencies_ms),
            "stale_samples_excluded": self.stale,
            "commit_to_routed_ms": _percentiles(self.routed_ms),
            "achieved_ops_per_s": round(load.rate, 1),
            "commits": load.commits,
            "dropped_slots": load.dropped,
            "syncer_lag_keys": {"max": max(lags), "mean": round(sum(lags) / len(lags))},
            "syncer": {
                k: self.syncer[k]
                for k in ("dirty_keys", "windows", "entities", "sent", "skipped", "retries")
            },
            "backfill": self.backfill,
        }


class Span:
    """What a phase measures between ``open`` and ``close``: by time for the latencies and lag
    samples, by index for the commit -> routed samples, by difference for the counters."""

    def __init__(self, running: Running, load_started: float) -> None:
        self._running = running
        self._load_started = load_started
        self.started = time.monotonic()
        routed = running.routed
        self._routed_at = len(routed.samples) if routed is not None else 0
        self._counts = _syncer_counts(running.stats.syncer)

    def close(self, name: str, load: LoadStats, ended: float) -> Phase:
        running = self._running
        routed = running.routed.samples[self._routed_at :] if running.routed is not None else []
        after = _syncer_counts(running.stats.syncer)
        latencies, stale = running.latencies_between(self.started, ended, self._load_started)
        return Phase(
            name=name,
            seconds=ended - self.started,
            latencies_ms=latencies,
            stale=stale,
            routed_ms=list(routed),
            load=load,
            syncer={k: after[k] - self._counts.get(k, 0) for k in after},
            lags=running.lags_between(self.started, ended),
        )


def baseline(running: Running, endpoints: StackEndpoints, args: argparse.Namespace) -> Phase:
    _log(f"A, baseline: load at {args.rate:g} ops/s for {args.seconds:g} s")
    load_started = time.monotonic()
    load = LiveLoad(endpoints.postgres_dsn, args.rate, args.concurrency)
    span = Span(running, load_started)
    time.sleep(args.seconds)
    ended = time.monotonic()
    stats = load.stop()
    phase = span.close("baseline", stats, ended)
    wait_idle(running, "after the baseline")
    return phase


def during_backfill(
    running: Running, endpoints: StackEndpoints, args: argparse.Namespace, name: str, max_lag: int
) -> Phase:
    _log(f"{name}: load at {args.rate:g} ops/s, then a backfill of {RESOURCE} (max lag {max_lag})")
    load_started = time.monotonic()
    load = LiveLoad(endpoints.postgres_dsn, args.rate, args.concurrency)
    time.sleep(LEAD_S)
    span = Span(running, load_started)
    child = _start_backfill(running, max_lag)
    out, err = _watch_backfill(running, child, name)
    walked = time.monotonic()
    if child.returncode != 0:
        load.stop()
        raise SystemExit(f"{name}: backfill exited {child.returncode}: {err[-2000:]}")
    match = _WRITTEN.search(out)
    keys = int(match.group(1).replace(",", "")) if match else 0
    _log(
        f"  {name}: {keys:,} keys written in {walked - span.started:.1f} s; waiting for the "
        "syncer to commit past them"
    )
    drained = _await_backfill(running, name)
    stats = load.stop()
    phase = span.close(name, stats, drained)
    total_s = drained - span.started
    phase.backfill = {
        "resource": RESOURCE,
        "max_lag": max_lag,
        "keys": keys,
        "walk_s": round(walked - span.started, 1),
        "total_s": round(total_s, 1),
        "keys_per_s": round(keys / total_s, 1) if total_s > 0 else None,
        "walk_keys_per_s": round(keys / (walked - span.started), 1),
    }
    wait_idle(running, f"after {name}")
    return phase


def _start_backfill(running: Running, max_lag: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "consumer.cli.main", "backfill", "--config", str(EXAMPLE)]
    argv += ["--resource", RESOURCE, "--no-wait", "--max-lag", str(max_lag)]
    return subprocess.Popen(
        argv,
        env={**os.environ, **running.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _watch_backfill(running: Running, child: subprocess.Popen[str], name: str) -> tuple[str, str]:
    """Wait for the backfill child to exit (its output read by a thread), logging progress."""
    result: list[tuple[str, str]] = []
    reader = threading.Thread(target=lambda: result.append(child.communicate()), daemon=True)
    reader.start()
    started = time.monotonic()
    while reader.is_alive():
        reader.join(PROGRESS_S)
        if reader.is_alive():
            if time.monotonic() - started > BACKFILL_TIMEOUT_S:
                child.kill()
                reader.join()
                break
            samples = len(running.latencies)
            _log(
                f"  {name}: walking, syncer lag {running.last_lag()}, "
                f"{_progress(running.stats)}; {samples:,} latency samples"
            )
    return result[0] if result else ("", "")


def _await_backfill(running: Running, name: str) -> float:
    """When the syncer committed past every offset the backfill's checkpoint holds (monotonic),
    as ``backfill`` without ``--no-wait`` waits for it."""
    definition = running.definition
    scope = BackfillScope.of(definition, "backfill", (RESOURCE,), (), None, None)

    async def offsets() -> dict[int, int]:
        redis: Redis = Redis.from_url(definition.redis.url.get_secret_value())
        try:
            store = CheckpointStore(redis, definition.redis.key_prefix)
            checkpoint = await store.load(scope.id)
        finally:
            await redis.aclose()
        return {} if checkpoint is None else dict(checkpoint.offsets)

    written = asyncio.run(offsets())
    position = SyncerPosition(definition)
    started = next_progress = time.monotonic()
    try:
        while time.monotonic() - started < BACKFILL_TIMEOUT_S:
            behind = asyncio.run(position.behind(written))
            now = time.monotonic()
            if behind == 0:
                return now
            if now >= next_progress:
                next_progress = now + PROGRESS_S
                _log(f"  {name}: {behind} partitions behind; lag {running.last_lag()}")
            time.sleep(SAMPLE_S)
    finally:
        position.close()
    raise SystemExit(f"{name}: the syncer did not pass the backfill in {BACKFILL_TIMEOUT_S} s")


def warm_up(running: Running, endpoints: StackEndpoints, args: argparse.Namespace) -> None:
    """A short load, so both stages are assigned and their connections open; then idle."""
    _log(f"warm-up: load for {WARMUP_S:g} s")
    load = LiveLoad(endpoints.postgres_dsn, args.rate, args.concurrency)
    time.sleep(WARMUP_S)
    load.stop()
    wait_idle(running, "warm-up")
    if not running.latencies:
        raise SystemExit(f"warm-up: no change reached Reach: {_progress(running.stats)}")


def _follow_routed(running: Running, endpoints: StackEndpoints) -> None:
    definition = running.definition
    running.routed = _RoutedLagThread(
        endpoints.bootstrap_servers, definition.topics.dirty, definition.topics.dirty_partitions
    )
    running.routed.start()


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    options = StackOptions(
        state_dir=state / "stack",
        with_debezium=True,
        seed_customers=args.customers,
        seed_transactions=args.transactions,
        topic_prefix=TOPIC_PREFIX,
        snapshot_mode="no_data",
    )
    result: dict[str, Any] = {}
    started = time.monotonic()
    with LocalStack(options) as stack:
        assert stack.endpoints is not None
        endpoints = stack.endpoints
        result["stack_ready_s"] = round(time.monotonic() - started, 1)
        result["stack_startup_s"] = {k: round(v, 1) for k, v in stack.startup_seconds.items()}
        _log(
            f"stack ready in {result['stack_ready_s']} s with {args.customers:,} customers and "
            f"{args.transactions:,} sales seeded (snapshot.mode no_data)"
        )
        phases: list[Phase] = []
        with reach_sync(endpoints) as running:
            wait_idle(running, "start")
            warm_up(running, endpoints, args)
            _follow_routed(running, endpoints)
            phases.append(baseline(running, endpoints, args))
            _report_phase(phases[-1])
            phases.append(during_backfill(running, endpoints, args, "backfill", args.max_lag))
            _report_phase(phases[-1])
        source_events = running.stats.router.events if running.stats.router else 0
        if args.unpaced:
            with reach_sync(endpoints) as running:
                _log(
                    f"C: a fresh reach-sync routes the source topics' {source_events:,} events "
                    "first"
                )
                wait_idle(running, "fresh reach-sync", source_events)
                _follow_routed(running, endpoints)
                phases.append(during_backfill(running, endpoints, args, "unpaced", UNPACED_MAX_LAG))
                _report_phase(phases[-1])
    result["phases"] = phases
    return result


def _report_phase(phase: Phase) -> None:
    _log(
        f"  {phase.name}: {len(phase.latencies_ms):,} samples over {phase.seconds:.1f} s, "
        f"{_format_percentiles(_percentiles(phase.latencies_ms))} "
        f"(load average {_loadavg():.2f})"
    )


def _ratio(a: dict[str, float], b: dict[str, float], key: str) -> float | None:
    if key not in a or key not in b or b[key] <= 0:
        return None
    return round(a[key] / b[key], 2)


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    phases = {p.name: p.summary() for p in result["phases"]}
    base = phases["baseline"]["latency_ms"]
    ratios: dict[str, float | None] = {}
    for name in ("backfill", "unpaced"):
        if name in phases:
            during = phases[name]["latency_ms"]
            for key in ("p50", "p99", "max"):
                ratios[f"{key}_{name}_to_baseline"] = _ratio(during, base, key)
    backfill = phases["backfill"]["backfill"]
    return {
        "customers": args.customers,
        "transactions": args.transactions,
        "target_ops_per_s": args.rate,
        "baseline_seconds": args.seconds,
        "max_lag": args.max_lag,
        "stack_ready_s": result["stack_ready_s"],
        "stack_startup_s": result["stack_startup_s"],
        "p99_baseline_ms": base.get("p99"),
        "p99_during_backfill_ms": phases["backfill"]["latency_ms"].get("p99"),
        "p99_during_unpaced_backfill_ms": (
            phases["unpaced"]["latency_ms"].get("p99") if "unpaced" in phases else None
        ),
        "backfill_keys_per_s": backfill["keys_per_s"] if backfill else None,
        "ratios": ratios,
        "phases": phases,
        "load_average": {"before": result["load_before"], "after": os.getloadavg()},
        "cpus": os.cpu_count(),
    }


def print_table(summary: dict[str, Any]) -> None:
    phases = summary["phases"]
    print(
        f"live changes during a backfill of {summary['customers']:,} customers "
        f"({summary['transactions']:,} sales; stack ready in {summary['stack_ready_s']} s), "
        f"load {summary['target_ops_per_s']:g} ops/s, both resources real time"
    )
    for name, label in (
        ("baseline", "A  no backfill"),
        ("backfill", f"B  backfill, max lag {summary['max_lag']:,}"),
        ("unpaced", "C  backfill, unpaced"),
    ):
        if name not in phases:
            continue
        phase = phases[name]
        print(
            f"  {label:<30} {phase['seconds']:6.1f} s  commit -> done "
            f"{_format_percentiles(phase['latency_ms'])}"
        )
        print(
            f"  {'':<30} {'':8}  commit -> routed "
            f"{_format_percentiles(phase['commit_to_routed_ms'])}"
        )
        lag = phase["syncer_lag_keys"]
        print(
            f"  {'':<30} {'':8}  load {phase['achieved_ops_per_s']} ops/s "
            f"({phase['dropped_slots']} slots dropped); syncer lag max {lag['max']:,}, "
            f"mean {lag['mean']:,} keys; windows {phase['syncer']['windows']:,}, "
            f"sent {phase['syncer']['sent']:,}"
            + (
                f"; {phase['stale_samples_excluded']:,} samples of older changes excluded"
                if phase["stale_samples_excluded"]
                else ""
            )
        )
        backfill = phase["backfill"]
        if backfill:
            print(
                f"  {'':<30} {'':8}  backfill {backfill['keys']:,} keys: written in "
                f"{backfill['walk_s']} s, all done in {backfill['total_s']} s "
                f"({backfill['keys_per_s']:,} keys/s)"
            )
    for key, value in summary["ratios"].items():
        print(f"  {key}: {value}")
    load = summary["load_average"]
    print(
        f"  machine: {summary['cpus']} CPUs, 1-min load average {load['before'][0]:.2f} before, "
        f"{load['after'][0]:.2f} after"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000, help="seeded; backfilled")
    parser.add_argument("--transactions", type=int, default=20_000, help="seeded sales")
    parser.add_argument("--rate", type=float, default=50.0, help="live operations/s")
    parser.add_argument("--concurrency", type=int, default=4, help="load workers")
    parser.add_argument("--seconds", type=float, default=30.0, help="the baseline's length")
    parser.add_argument(
        "--max-lag",
        type=int,
        default=DEFAULT_MAX_LAG,
        help=f"the backfill's --max-lag (its default, {DEFAULT_MAX_LAG})",
    )
    parser.add_argument(
        "--unpaced", action="store_true", help="also a backfill with --max-lag 10^9"
    )
    args = parser.parse_args(argv)
    if math.isnan(args.rate) or args.rate <= 0:
        parser.error("--rate must be positive")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="reach-sync-bench-") as tmp:
        state = Path(tmp)
        state.chmod(0o755)  # an unprivileged Postgres must traverse it
        result = run(args, state)
    result["load_before"] = load_before
    summary = summarize(args, result)
    print_table(summary)
    print(json.dumps(summary))
    if abandoned_consumers():
        # As `reach-sync run` does: consumers released without a LeaveGroup must not get one
        # from a destructor on the way out (consumer/kafka.py).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
