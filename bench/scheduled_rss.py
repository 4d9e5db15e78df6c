"""Scheduled delivery: the peak RSS of ``reach-sync run`` while one run sends 200,000 pending
entities, beside the same service with nothing pending, in one run.

The issue: a scheduled resource's keys pile up on ``topics.scheduled`` between ticks (an hour of
changes, a backfill), and one run reads them all. The scheduler reads them in windows of
``max_keys`` entities, one at a time (schedule/scheduler.py): memory should be one window, not
the run's keys. This measures it.

Set-up: a LocalStack without Debezium, the shop seeded with ``--customers`` customers (200,000)
and ``--transactions`` sales; examples/shop.yaml rewritten with customers ``delivery: {mode:
scheduled, every: --every}`` (transactions stay real time), with its own group, topics and
Redis prefix per child. ``--every`` is ``1d`` by default: the first start runs at once whatever
the period (no run record yet), and a period longer than the run keeps that run's counts in the
record until they are read. With ``10s``, a run longer than 10 s is followed at once by a
catch-up run of the ticks it overran, whose empty counts replace the big run's within a
millisecond of its end. Then, as children running the real command, ``python -m
consumer.cli.main run --config <definition>``:

- measured: one dirty key per customer (``encode_dirty`` / ``dirty_message_key``, cause
  ``backfill``, as ``reach-sync backfill`` writes them) produced to the scheduled topic before
  the child starts; the child's first start finds no run record and runs at once. It runs until
  the record (schedule/runs.py, ``RunStore``) says that run finished; then SIGTERM;
- baseline: a fresh definition (new group, topics, prefix), nothing pending, for the same time
  from start to SIGTERM (its runs read nothing).

Peak RSS is each child's VmHWM from /proc (sampled until it is reaped: pipeline.py's
``_vm_hwm_kib`` and ``_reap``). The run's duration and counts come from its record (started to
finished; keys/s is keys over that).

Prints a table, then one JSON object on the last line: the figures and the ratio of the peaks.
It asserts nothing.

    .venv/bin/python bench/scheduled_rss.py                         # 200,000 pending
    .venv/bin/python bench/scheduled_rss.py --customers 5000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from reach_devstack.demo import demo_env
from reach_devstack.stack import LocalStack, StackEndpoints, StackOptions
from redis.asyncio import Redis

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.kafka import producer_settings
from consumer.router.dirty import Cause, DirtyKey, dirty_message_key, encode_dirty
from consumer.router.topics import ensure_topics
from consumer.schedule.runs import RunRecord, RunStore

# bench/pipeline.py's helpers, next to this file (run as `python bench/scheduled_rss.py`),
# imported by name as bench/backfill_latency.py does: pipeline.py is not mypy-strict-clean.
_pipeline: Any = importlib.import_module("pipeline")

EXAMPLE: Path = _pipeline.EXAMPLE
ROOT: Path = _pipeline.ROOT
TOPIC_PREFIX: str = _pipeline.TOPIC_PREFIX
_vm_hwm_kib: Callable[[int], int] = _pipeline._vm_hwm_kib
_reap: Callable[[subprocess.Popen[bytes], int], tuple[int | None, int]] = _pipeline._reap

RESOURCE = "customers"
POLL_S = 0.25
RUN_TIMEOUT_S = 1800.0
PROGRESS_S = 15.0
_BATCH = "    delivery:\n      mode: batch\n      window_ms: 500\n"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Child:
    label: str
    pending: int
    seconds: float
    peak_kib: int
    exit_code: int | None
    record: RunRecord
    log_path: Path

    def summary(self) -> dict[str, Any]:
        record, last = self.record, self.record.last
        run_s = (
            (record.finished_ms - record.started_ms) / 1000
            if record.finished_ms is not None and record.started_ms is not None
            else None
        )
        return {
            "pending_keys": self.pending,
            "seconds": round(self.seconds, 1),
            "peak_rss_mib": round(self.peak_kib / 1024, 1),
            "exit_code": self.exit_code,
            "run_seconds": None if run_s is None else round(run_s, 1),
            "run_keys": last.keys,
            "run_entities": last.entities,
            "run_sent": last.sent,
            "run_skipped": last.skipped,
            "run_dead_lettered": last.dead_lettered,
            "run_held": last.held,
            "keys_per_s": round(last.keys / run_s) if run_s else None,
        }


def _scheduled_config(state: Path, every: str) -> Path:
    shop = EXAMPLE.read_text()
    if _BATCH not in shop:
        raise SystemExit("examples/shop.yaml's customers delivery changed; update this bench")
    path = state / "scheduled.yaml"
    path.write_text(
        shop.replace(_BATCH, f"    delivery:\n      mode: scheduled\n      every: {every}\n")
    )
    return path


def _definition(
    endpoints: StackEndpoints, config: Path, tag: str
) -> tuple[SyncDefinition, dict[str, str]]:
    """The scheduled definition on the stack, with its own group, topics and Redis prefix."""
    env = {
        **demo_env(endpoints, group=f"bench-{tag}"),
        "REACH_SYNC_DIRTY_TOPIC": f"bench.dirty.{tag}",
        "REACH_SYNC_DEAD_LETTER_TOPIC": f"bench.dead-letter.{tag}",
        "REACH_SYNC_AUDIT_TOPIC": f"bench.audit.{tag}",
        "REACH_SYNC_REDIS_PREFIX": f"bench:{tag}",
    }
    return load_definition(config, env), env


def produce_pending(definition: SyncDefinition, dsn: str, count: int) -> int:
    """One dirty key per customer (the first ``count`` ids) on the scheduled topic, written
    now: before the child starts, so its first run takes them all."""
    with psycopg.connect(dsn) as conn:
        ids = [
            int(row[0])
            for row in conn.execute("SELECT id FROM customers ORDER BY id LIMIT %s", (count,))
        ]
    producer = Producer({**producer_settings(definition.source.kafka), "linger.ms": 50})
    topic = definition.dirty_topic_of(RESOURCE)
    assert topic == definition.topics.scheduled
    now_ms = int(time.time() * 1000)
    for n in ids:
        key = DirtyKey(RESOURCE, n, Cause(kind="backfill"), now_ms)
        while True:
            try:
                producer.produce(topic, encode_dirty(key), dirty_message_key(RESOURCE, n))
                break
            except BufferError:
                producer.poll(0.1)
    left = producer.flush(120)
    if left:
        raise SystemExit(f"{left} dirty keys not acknowledged")
    return len(ids)


def _record(definition: SyncDefinition) -> RunRecord:
    async def read() -> RunRecord:
        redis: Redis = Redis.from_url(definition.redis.url.get_secret_value())
        try:
            return await RunStore(redis, definition.redis.key_prefix).read(RESOURCE)
        finally:
            await redis.aclose()

    return asyncio.run(read())


def run_child(
    label: str,
    definition: SyncDefinition,
    env: dict[str, str],
    config: Path,
    state: Path,
    pending: int,
    seconds: float | None,
) -> Child:
    """``reach-sync run`` until its first run with keys finished (``seconds`` None) or for
    ``seconds``; then SIGTERM. The peak VmHWM over its whole life."""
    log_path = state / f"reach-sync-{label}.log"
    argv = [sys.executable, "-m", "consumer.cli.main", "run", "--config", str(config)]
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    started = time.monotonic()
    peak = 0
    record = RunRecord()
    next_progress = started + PROGRESS_S
    try:
        while True:
            time.sleep(POLL_S)
            peak = max(peak, _vm_hwm_kib(child.pid))
            if child.poll() is not None:
                raise SystemExit(f"{label}: reach-sync exited with {child.returncode}: {log_path}")
            elapsed = time.monotonic() - started
            if seconds is not None:
                if elapsed >= seconds:
                    break
                continue
            record = _record(definition)
            if record.finished_ms is not None and record.last.keys > 0:
                break
            if elapsed > RUN_TIMEOUT_S:
                raise SystemExit(f"{label}: the run did not finish in {RUN_TIMEOUT_S:.0f} s")
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_S
                state_now = "running" if record.running() else "waiting"
                _log(f"{label}: {elapsed:.0f} s, {state_now}, peak {peak / 1024:.0f} MiB")
    finally:
        seconds_run = time.monotonic() - started
        child.terminate()
        code, peak = _reap(child, peak)
    if seconds is not None:
        record = _record(definition)
    return Child(label, pending, seconds_run, peak, code, record, log_path)


def run(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    options = StackOptions(
        state_dir=state / "stack",
        with_debezium=False,
        seed_customers=args.customers,
        seed_transactions=args.transactions,
        topic_prefix=TOPIC_PREFIX,
    )
    config = _scheduled_config(state, args.every)
    started = time.monotonic()
    with LocalStack(options) as stack:
        assert stack.endpoints is not None
        endpoints = stack.endpoints
        ready_s = round(time.monotonic() - started, 1)
        _log(f"stack ready in {ready_s} s with {args.customers:,} customers seeded")

        definition, env = _definition(endpoints, config, uuid.uuid4().hex[:8])
        ensure_topics(definition)
        t0 = time.monotonic()
        pending = produce_pending(definition, endpoints.postgres_dsn, args.customers)
        produce_s = time.monotonic() - t0
        _log(f"{pending:,} dirty keys on {definition.topics.scheduled} in {produce_s:.1f} s")
        measured = run_child("measured", definition, env, config, state, pending, None)
        _log(
            f"measured: run finished; {measured.seconds:.1f} s in all, peak "
            f"{measured.peak_kib / 1024:.1f} MiB"
        )

        base_definition, base_env = _definition(endpoints, config, uuid.uuid4().hex[:8])
        baseline = run_child(
            "baseline", base_definition, base_env, config, state, 0, measured.seconds
        )
        _log(f"baseline: {baseline.seconds:.1f} s, peak {baseline.peak_kib / 1024:.1f} MiB")
    return {
        "stack_ready_s": ready_s,
        "produce_s": round(produce_s, 1),
        "measured": measured,
        "baseline": baseline,
        "max_keys": definition.resources[RESOURCE].delivery.max_keys,
    }


def summarize(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    measured: Child = result["measured"]
    baseline: Child = result["baseline"]
    return {
        "bench": "scheduled_rss",
        "customers": args.customers,
        "transactions": args.transactions,
        "every": args.every,
        "max_keys": result["max_keys"],
        "stack_ready_s": result["stack_ready_s"],
        "produce_s": result["produce_s"],
        "measured": measured.summary(),
        "baseline": baseline.summary(),
        "peak_rss_ratio": (
            round(measured.peak_kib / baseline.peak_kib, 2) if baseline.peak_kib else None
        ),
        "peak_rss_delta_mib": round((measured.peak_kib - baseline.peak_kib) / 1024, 1),
        "load_average": {"before": result["load_before"], "after": os.getloadavg()},
        "cpus": os.cpu_count(),
    }


def print_table(summary: dict[str, Any]) -> None:
    m, b = summary["measured"], summary["baseline"]
    print(
        f"scheduled delivery: reach-sync run, customers every {summary['every']} "
        f"(max_keys {summary['max_keys']:,}), {summary['customers']:,} customers seeded"
    )
    print(f"  {'':<10} {'pending':>9} {'alive s':>8} {'peak RSS':>10}  run")
    for label, row in (("baseline", b), ("measured", m)):
        run_text = (
            f"{row['run_keys']:,} keys in {row['run_seconds']} s "
            f"({row['keys_per_s']:,} keys/s): {row['run_sent']:,} sent, "
            f"{row['run_skipped']:,} skipped"
            if row["run_keys"]
            else "nothing to send"
        )
        print(
            f"  {label:<10} {row['pending_keys']:>9,} {row['seconds']:>8.1f} "
            f"{row['peak_rss_mib']:>7.1f} MiB  {run_text}"
        )
    print(
        f"  peak RSS measured / baseline: {summary['peak_rss_ratio']} "
        f"(+{summary['peak_rss_delta_mib']} MiB)"
    )
    load = summary["load_average"]
    print(
        f"  machine: {summary['cpus']} CPUs, 1-min load average {load['before'][0]:.2f} before, "
        f"{load['after'][0]:.2f} after"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--customers", type=int, default=200_000, help="seeded; each one a pending dirty key"
    )
    parser.add_argument("--transactions", type=int, default=1_000, help="seeded sales")
    parser.add_argument(
        "--every", default="1d", help="customers' delivery.every (default 1d; see above)"
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="reach-sync-bench-") as tmp:
        state = Path(tmp)
        state.chmod(0o755)  # an unprivileged Postgres must traverse it
        result = run(args, state)
        result["load_before"] = load_before
    summary = summarize(args, result)
    print_table(summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
