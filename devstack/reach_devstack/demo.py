"""``reach-sync demo``: the whole thing on the local stack, with a live view, then a check.

It starts the local stack, seeds the shop, runs reach-sync with ``examples/shop.yaml`` while the
workload generator changes the database, shows what flows (the workload's share done and ETA,
then the backlog's; events in and sent per second; dirty keys, windows, recomputes, sent,
skipped as unchanged, dead-lettered, commit → accepted latency; redrawn on a terminal, a line
every 5 s elsewhere), then
checks that the sandbox equals the projection of the database for every entity, prints a
summary and stops everything.

The workload starts once both stages have their partitions (``/readyz`` says so), and the time
that took is printed on its own: a new consumer group's join takes seconds on any broker, and
changes made meanwhile would wait for it, so counting them would make the latency line say how
long reach-sync takes to start rather than how fast a change crosses it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.cli.progress import PLAIN_INTERVAL_S, format_duration, format_rate, rate
from consumer.cli.status_report import ServiceHealth, service_health
from consumer.config import HealthSettings, SyncDefinition
from consumer.config_file import load_definition
from consumer.service import ServiceStats, run_service
from reach_devstack.stack import (
    DEV_TENANTS,
    FORMATS,
    LocalStack,
    StackEndpoints,
    StackOptions,
    stack_env,
)
from reach_devstack.verify import Difference, verify_sandbox

__all__ = ["Pace", "add_arguments", "demo_env", "every_stage_consuming", "pace_line", "run"]

DEFINITION = Path(__file__).parents[2] / "examples" / "shop.yaml"
REFRESH_S = 1.0
# After the workload, the pipeline has caught up once nothing moved for this long.
QUIET_PERIOD_S = 3.0
CATCH_UP_TIMEOUT_S = 180.0
PIPELINE_STOP_S = 90.0
# How long the demo waits for reach-sync's consumer groups before starting the workload anyway.
JOIN_TIMEOUT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the workload runs")
    parser.add_argument("--rate", type=float, default=40.0, help="database changes per second")
    parser.add_argument("--state-dir", type=Path, default=Path(".state/demo"))
    parser.add_argument("--no-schemas", action="store_true", help="Debezium JSON without schemas")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="what Debezium writes: JSON (default) or Avro with a local schema registry",
    )
    parser.add_argument("--seed", type=int, default=7, help="workload random seed")


def demo_env(endpoints: StackEndpoints, group: str = "reach-sync-demo") -> dict[str, str]:
    """The environment examples/shop.yaml reads, pointing at the local stack (what `reach-sync
    dev env` prints), in consumer group ``group``."""
    return {**stack_env(endpoints), "REACH_SYNC_GROUP_ID": group}


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@dataclass(frozen=True, slots=True)
class Pace:
    """The counters rates are taken from, at one refresh (monotonic ``at``)."""

    at: float
    events: int
    sent: int
    # Dirty keys the syncer took: the backlog drains at this rate.
    taken: int

    @classmethod
    def of(cls, stats: ServiceStats, at: float) -> Pace:
        events = stats.router.events if stats.router else 0
        return cls(at, events, stats.syncer.sent, stats.syncer.dirty_keys)


def pace_line(
    before: Pace, now: Pace, elapsed: float, seconds: float, load_running: bool, backlog: int
) -> str:
    """What the demo is doing and how fast: the workload's share done and ETA (it runs for a
    fixed time), then how the backlog drains; events in and records sent per second over the
    last refresh (consumer/cli/progress.py formats them as every progress line does)."""
    span = now.at - before.at
    if load_running:
        share = min(100, int(elapsed * 100 / seconds)) if seconds > 0 else 100
        phase = f"workload {share}% · ETA {format_duration(max(0.0, seconds - elapsed))}"
    elif backlog == 0:
        phase = "workload done · caught up"
    else:
        drained = rate(now.taken - before.taken, span)
        left = f", ~{format_duration(backlog / drained)} left" if drained else ""
        phase = f"workload done · catching up: backlog {backlog}{left}"
    events = format_rate(rate(now.events - before.events, span), "events")
    sent = format_rate(rate(now.sent - before.sent, span), "records")
    return f"{phase} · in {events} · sent {sent}"


def _backlog(stats: ServiceStats) -> int:
    produced = stats.router.dirty_keys if stats.router else 0
    return max(0, produced - stats.syncer.dirty_keys)


def _lines(
    stats: ServiceStats, elapsed: float, load_running: bool, pace: str | None = None
) -> list[str]:
    router, syncer = stats.router, stats.syncer
    events = router.events if router else 0
    produced = router.dirty_keys if router else 0
    latencies = list(syncer.latencies_ms)
    return [
        f"t={elapsed:5.1f}s  " + (pace or f"workload {'running' if load_running else 'done'}"),
        f"  events in      {events:8d}   ignored {sum(router.ignored.values()) if router else 0:6d}"
        f"   dead-lettered (router) {router.dead_lettered if router else 0}",
        f"  dirty keys     {produced:8d}   backlog {max(0, produced - syncer.dirty_keys):6d}"
        f"   coalesced into {syncer.entities} entities in {syncer.windows} windows",
        f"  recomputes     {syncer.recomputes:8d}   retries {syncer.retries:6d}",
        f"  sent           {syncer.sent:8d}   skipped (unchanged) {syncer.skipped:6d}"
        f"   deleted {syncer.deleted:5d}   dead-lettered {syncer.dead_lettered}",
        f"  commit → accepted   p50 {_percentile(latencies, 50):7.0f} ms"
        f"   p99 {_percentile(latencies, 99):7.0f} ms   ({len(latencies)} samples)",
    ]


def _render(lines: list[str], tty: bool) -> None:
    if tty:
        # Clear below, draw the block, then return to its first line for the next redraw.
        sys.stdout.write("\x1b[J" + "\n".join(lines) + f"\n\x1b[{len(lines)}F")
        sys.stdout.flush()


def _moving(stats: ServiceStats) -> tuple[int, ...]:
    router = stats.router
    syncer = stats.syncer
    return (router.events if router else 0, syncer.dirty_keys, syncer.windows)


def every_stage_consuming(health: ServiceHealth) -> bool:
    """True when ``/readyz`` answered with stages and each has partitions assigned: the process
    is ready as soon as one has, and the demo waits for both."""
    return health.error is None and bool(health.stages) and all(s.assigned for s in health.stages)


def _wait_until_consuming(stats: ServiceStats, pipeline: threading.Thread) -> float | None:
    """Seconds until every stage of ``pipeline`` had its partitions; None if it never did."""
    started = time.monotonic()
    while pipeline.is_alive() and time.monotonic() - started < JOIN_TIMEOUT_S:
        port = stats.health_port
        if port is not None and every_stage_consuming(
            service_health(f"http://127.0.0.1:{port}/readyz")  # no answer yet: an error
        ):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def _start_load(
    dsn: str, rate: float, seconds: float, seed: int
) -> tuple[threading.Thread, list[Any]]:
    from reach_devstack.load import run_load

    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_load(dsn, rate=rate, seconds=seconds, rng_seed=seed, progress=False)
        ),
        name="demo-load",
        daemon=True,
    )
    thread.start()
    return thread, result


def _report(differences: list[Difference]) -> bool:
    ok = all(d.equal for d in differences)
    for d in differences:
        if d.equal:
            print(f"  {d.resource:<13} {d.checked:6d} entities: the sandbox equals the projection")
        else:
            print(
                f"  {d.resource:<13} MISMATCH: {len(d.missing)} missing, {len(d.extra)} extra, "
                f"{len(d.different)} different (e.g. {(d.missing + d.extra + d.different)[:3]})"
            )
    return ok


def run(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    if args.format == "avro" and args.no_schemas:
        print(
            "demo: --no-schemas is for --format json; Avro always has its schema", file=sys.stderr
        )
        return 2
    if state_dir.exists():
        shutil.rmtree(state_dir)
    options = StackOptions(
        state_dir=state_dir, debezium_schemas=not args.no_schemas, format=args.format
    )
    registry = ", schema registry" if args.format == "avro" else ""
    print(
        f"starting the local stack: broker, Postgres, Redis, Reach sandbox{registry}, "
        f"Debezium ({args.format}) ...",
        flush=True,
    )
    stack = LocalStack(options)
    endpoints = stack.start()
    try:
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in stack.startup_seconds.items())
        print(f"ready ({timings}); logs in {endpoints.logs_dir}", flush=True)
        definition = load_definition(DEFINITION, demo_env(endpoints))
        return _run_pipeline(definition, endpoints, args)
    finally:
        print("stopping the local stack", flush=True)
        stack.stop()


def _run_pipeline(
    definition: SyncDefinition, endpoints: StackEndpoints, args: argparse.Namespace
) -> int:
    stats = ServiceStats()
    stop = threading.Event()
    if definition.health is None:  # /readyz on a free loopback port says when both stages consume
        definition = definition.model_copy(
            update={"health": HealthSettings.model_validate({"port": 0})}
        )
    pipeline = threading.Thread(
        target=run_service, args=(definition, stop), kwargs={"stats": stats}, name="reach-sync"
    )
    pipeline.start()
    print(f"reach-sync starting with {DEFINITION.name} ...", flush=True)
    joined_s = _wait_until_consuming(stats, pipeline)
    if joined_s is None:
        print("reach-sync has not got its partitions yet; starting the workload anyway", flush=True)
    else:
        print(
            f"both stages consuming after {joined_s:.1f} s (mostly the consumer groups' join)",
            flush=True,
        )
    workload = f"{args.rate:g} changes/s for {args.seconds:g} s"
    print(f"workload: {workload}\n", flush=True)
    tty = sys.stdout.isatty()
    started = time.monotonic()
    load, load_result = _start_load(endpoints.postgres_dsn, args.rate, args.seconds, args.seed)
    last_move, last_state = time.monotonic(), _moving(stats)
    pace, printed_at = Pace.of(stats, started), started
    try:
        while pipeline.is_alive():
            time.sleep(REFRESH_S)
            now = time.monotonic()
            before, pace = pace, Pace.of(stats, now)
            headline = pace_line(
                before, pace, now - started, args.seconds, load.is_alive(), _backlog(stats)
            )
            if tty:
                _render(_lines(stats, now - started, load.is_alive(), headline), tty)
            elif now - printed_at >= PLAIN_INTERVAL_S:  # a log gets a line every few seconds
                print(f"t={now - started:5.1f}s  {headline}", flush=True)
                printed_at = now
            state = _moving(stats)
            if state != last_state:
                last_move, last_state = time.monotonic(), state
            caught_up = time.monotonic() - last_move > QUIET_PERIOD_S and stats.syncer.windows > 0
            if not load.is_alive() and caught_up:
                break
            if time.monotonic() - started > args.seconds + CATCH_UP_TIMEOUT_S:
                print("\nthe pipeline did not catch up in time", flush=True)
                break
    finally:
        stop.set()
        pipeline.join(PIPELINE_STOP_S)
    if tty:
        sys.stdout.write("\x1b[J")
    print("\n".join(_lines(stats, time.monotonic() - started, False)))
    if stats.router_error is not None:
        print(f"\nthe router stopped: {stats.router_error}")
        return 1
    print(f"\nworkload: {load_result[0] if load_result else 'did not finish'}")
    print("\nchecking the sandbox against the database ...")
    tenants = [external for _, external in DEV_TENANTS]
    differences = asyncio.run(
        verify_sandbox(definition, endpoints.sandbox_url, endpoints.sandbox_admin_token, tenants)
    )
    return 0 if _report(differences) else 1
