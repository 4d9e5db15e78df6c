"""`reach-sync status` on the real broker: committed offsets, lag, rates and dead letters.

Messages are produced one record batch each (a flush after every message): the local broker's
high watermark is the first offset of a partition's last batch plus one (docs/local-stack.md),
so with one-message batches it is exact and the lag figures can be checked to the message.
Offsets are committed for the router's and the syncer's groups by consumers that never
subscribe, as a running service's commits would land. Nothing here needs a database.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from reach_devstack.process import free_port
from redis.asyncio import Redis

from consumer.cli import status_report
from consumer.cli.main import main
from consumer.cli.status_report import GroupOffsets, StatusReader, gather
from consumer.cli.status_view import group_rate, render
from consumer.config_file import load_definition
from consumer.observe.health import HealthServer, Snapshot
from consumer.observe.progress import PartitionState, StageProgress
from consumer.schedule.runs import RunStore, RunSummary

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "shop.yaml"
ENV = {
    "REACH_SYNC_PARTNER_ID": "partner-1",
    "REACH_SYNC_JWT_SECRET": "unused-by-status",
    "REACH_SYNC_REACH_URL": "http://127.0.0.1:1",
    "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:1/0",
    "REACH_SYNC_DATABASE_URL": "postgresql://reach-sync@127.0.0.1:1/none?connect_timeout=1",
}
EXIT_BROKER, EXIT_CONFIG = 1, 2


@dataclass(frozen=True)
class Deployment:
    """A definition over this test's own topics, with what each partition holds."""

    config: Path
    broker: str
    prefix: str
    customers: str
    transactions: str
    dirty: str
    dead_letter: str


def _write_definition(
    tmp_path: Path,
    broker: str,
    prefix: str,
    health_port: int | None = None,
    scheduled: dict[str, str] | None = None,
    **topics: str,
) -> Path:
    """examples/shop.yaml on this test's topics; ``scheduled``: customers' delivery becomes
    ``{mode: scheduled, **scheduled}``."""
    data = yaml.safe_load(EXAMPLE.read_text())
    if scheduled is not None:
        data["resources"]["customers"]["delivery"] = {"mode": "scheduled", **scheduled}
    kafka = data["source"]["kafka"]
    kafka["bootstrap_servers"] = broker
    kafka["group_id"] = prefix
    kafka["topic_pattern"] = rf"^{re.escape(prefix)}\.public\."
    data["topics"] = {
        "dirty": topics.get("dirty", f"{prefix}.dirty"),
        "dirty_partitions": 3,
        "dead_letter": topics.get("dead_letter", f"{prefix}.dead-letter"),
    }
    if health_port is not None:
        data["health"] = {"port": health_port}
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _produce_one_batch_each(broker: str, counts: dict[tuple[str, int], int]) -> None:
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 0})
    for (topic, partition), n in counts.items():
        for i in range(n):
            producer.produce(topic, f"m{i}".encode(), partition=partition)
            assert producer.flush(10) == 0


def _commit(broker: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": group, "enable.auto.commit": False}
    )
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def _committed(broker: str, group: str, partitions: list[tuple[str, int]]) -> list[int]:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=10)
    finally:
        consumer.close()
    return [tp.offset for tp in found]


def _topics(broker: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10).topics)


@pytest.fixture
def deployment(
    tmp_path: Path, broker: str, unique: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> Deployment:
    """Source topics (customers: 2 partitions, transactions: 1), a dirty topic of 3 partitions
    and a dead-letter topic, holding known numbers of messages."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    prefix = unique("status")
    d = Deployment(
        config=_write_definition(tmp_path, broker, prefix),
        broker=broker,
        prefix=prefix,
        customers=f"{prefix}.public.customers",
        transactions=f"{prefix}.public.transactions",
        dirty=f"{prefix}.dirty",
        dead_letter=f"{prefix}.dead-letter",
    )
    admin = AdminClient({"bootstrap.servers": broker})
    wanted = {d.customers: 2, d.transactions: 1, d.dirty: 3, d.dead_letter: 1}
    for future in admin.create_topics([NewTopic(t, n, 1) for t, n in wanted.items()]).values():
        future.result(timeout=10)
    _produce_one_batch_each(
        broker,
        {
            (d.customers, 0): 5,
            (d.customers, 1): 3,
            (d.transactions, 0): 4,
            (d.dirty, 0): 6,
            (d.dirty, 2): 2,
            (d.dead_letter, 0): 3,
        },
    )
    _commit(broker, f"{prefix}.router", {(d.customers, 0): 2, (d.customers, 1): 3})
    _commit(broker, f"{prefix}.syncer", {(d.dirty, 0): 6, (d.dirty, 2): 1})
    return d


def _figures(group: GroupOffsets) -> list[tuple[str, int, int | None, int, int]]:
    return [(p.topic, p.partition, p.committed, p.end, p.lag) for p in group.partitions]


def test_status_reads_each_groups_committed_offsets_and_lag_exactly(
    deployment: Deployment,
) -> None:
    d = deployment
    definition = load_definition(d.config)
    topics_before = _topics(d.broker)

    def meanwhile(_seconds: float) -> None:
        """Between the two samples, the router commits two more messages of customers[0]."""
        _commit(d.broker, f"{d.prefix}.router", {(d.customers, 0): 4})

    with StatusReader(definition) as reader:
        report = gather(reader, d.config.name, "no health here", 0.0, sleep=meanwhile)

    assert report.earlier is not None
    router_before, syncer_before = report.earlier.groups
    router, syncer = report.now.groups
    assert (router.stage, router.group) == ("router", f"{d.prefix}.router")
    assert (syncer.stage, syncer.group) == ("syncer", f"{d.prefix}.syncer")
    assert _figures(router_before)[0] == (d.customers, 0, 2, 5, 3)
    assert _figures(router) == [
        (d.customers, 0, 4, 5, 1),
        (d.customers, 1, 3, 3, 0),
        (d.transactions, 0, None, 4, 4),  # never committed: all of it is lag
    ]
    assert router.lag == 5
    assert _figures(syncer) == [
        (d.dirty, 0, 6, 6, 0),
        (d.dirty, 1, None, 0, 0),
        (d.dirty, 2, 1, 2, 1),
    ]
    assert syncer.lag == 1
    assert report.now.dead_letters.count == 3

    assert group_rate(router_before, router) == 2 / (router.at - router_before.at)
    assert group_rate(syncer_before, syncer) == 0.0

    # Reading joined no group, committed nothing and created no topic.
    assert _committed(d.broker, f"{d.prefix}.syncer", [(d.dirty, 0), (d.dirty, 1)]) == [6, -1001]
    assert _topics(d.broker) == topics_before

    lines = render(report)
    assert f"router  group {d.prefix}.router  lag 5" in lines[3]
    assert "service: no health here; the figures below are Kafka's only" in lines
    assert lines[-1] == f"dead letters  {d.dead_letter}: 3"


def test_a_committed_offset_past_the_watermark_is_shown_as_caught_up_with_a_note(
    deployment: Deployment,
) -> None:
    """Several messages in one record batch: the local broker's watermark trails them."""
    d = deployment
    producer = Producer({"bootstrap.servers": d.broker, "linger.ms": 200})
    for i in range(4):
        producer.produce(d.dirty, f"b{i}".encode(), partition=1)
    assert producer.flush(10) == 0
    _commit(d.broker, f"{d.prefix}.syncer", {(d.dirty, 1): 4})
    with StatusReader(load_definition(d.config)) as reader:
        report = gather(reader, "x", [], 0.0)
    part = report.now.groups[1].partitions[1]
    assert (part.committed, part.lag, part.end) == (4, 0, max(4, part.high))
    if part.ahead:  # the local broker; on Kafka the watermark is exact and there is no note
        assert any(line.startswith("note: * committed past") for line in render(report))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_without_an_answering_health_port_still_shows_kafkas_figures(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    port = free_port()  # nothing listens there
    config = _write_definition(tmp_path, d.broker, d.prefix, health_port=port)
    code, out, err = _run(capsys, "status", "--config", str(config), "--interval", "0.1")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1] == (
        f"service http://127.0.0.1:{port}/readyz: no answer (connection refused); the figures "
        "below are Kafka's only"
    )
    assert any(line.startswith(f"router  group {d.prefix}.router  lag 7  ") for line in lines)
    row = next(line for line in lines if line.split()[:2] == [d.customers, "0"])
    assert row.split()[2:5] == ["2", "5", "3"]  # committed, end, lag


def test_the_command_shows_what_the_answering_process_says_per_partition(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    syncer = StageProgress(
        "syncer",
        assigned=1,
        lag=1,
        lagging_since=900.0,
        observed_at=1000.0,
        partitions=(PartitionState(d.dirty, 2, 1, 1, 900.0),),
    )
    snapshot = Snapshot.of([syncer], started_at=0.0, blocked_tenants=("m-2",))
    server = HealthServer("127.0.0.1", 0, lambda: snapshot, 60, clock=lambda: 1000.0)
    server.start()
    try:
        code, out, err = _run(
            capsys,
            "status",
            *("--config", str(d.config), "--interval", "0.1"),
            *("--health-url", f"127.0.0.1:{server.port}"),
        )
    finally:
        server.close()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].startswith(f"service http://127.0.0.1:{server.port}/readyz: NOT READY: lag 1")
    assert "  syncer  1 partition here, lag 1, no progress for 1 min 40 s" in lines
    assert any("blocked tenants: m-2" in line for line in lines)
    row = next(line for line in lines if line.split()[:2] == [d.dirty, "2"])
    assert row.endswith("assigned, lag 1, stuck 1 min 40 s")
    other = next(line for line in lines if line.split()[:2] == [d.dirty, "0"])
    assert other.endswith(" -")


def test_a_missing_topic_is_one_line_and_exit_2_and_is_not_created(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    missing = f"{d.prefix}.no-such-dirty"
    config = _write_definition(tmp_path, d.broker, d.prefix, dirty=missing)
    code, out, err = _run(capsys, "status", "--config", str(config), "--interval", "0.1")
    assert (code, out) == (EXIT_CONFIG, "")
    assert err == (
        f"status: the dirty topic {missing} does not exist (topics.dirty; reach-sync run "
        "creates it)\n"
    )
    assert missing not in _topics(d.broker)


def test_an_unreachable_broker_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(status_report, "BROKER_TIMEOUT_S", 1.0)
    config = _write_definition(tmp_path, f"127.0.0.1:{free_port()}", "status_nobroker")
    code, out, err = _run(capsys, "status", "--config", str(config), "--interval", "0.1")
    assert (code, out) == (EXIT_BROKER, "")
    assert err.count("\n") == 1
    assert err.startswith("status: reading metadata: the broker did not answer")


@pytest.mark.parametrize("watch", [False, True], ids=["once", "watch"])
def test_a_reader_that_went_away_ends_status_quietly(deployment: Deployment, watch: bool) -> None:
    """``reach-sync status FILE | head -0``, exactly: stdout's reader is gone before the report
    is written. No traceback; exit code 1 (Python's convention for EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    argv = ["status", str(deployment.config), "--interval", "0.1"]  # FILE, not --config
    try:
        done = subprocess.run(
            [sys.executable, "-m", "consumer.cli.main", *argv, *(["--watch"] if watch else [])],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


# --- scheduled resources -------------------------------------------------------------------------


async def _record_a_finished_run(redis_url: str, prefix: str, tick_ms: int) -> None:
    """What a scheduler writes when a run of customers ends (schedule/runs.py)."""
    redis: Redis = Redis.from_url(redis_url)
    try:
        runs = RunStore(redis, prefix)
        await runs.started("customers", tick_ms, tick_ms + 200, 3)
        summary = RunSummary(keys=9, entities=7, sent=6, skipped=1)
        await runs.finished("customers", tick_ms, tick_ms + 2_200, summary, tick_ms + 10_000)
    finally:
        await redis.aclose()


@pytest.fixture
def scheduled_deployment(deployment: Deployment, tmp_path: Path) -> tuple[Deployment, str]:
    """The deployment with customers scheduled every 10 s, and its scheduled topic of 3
    partitions: 4 keys in partition 0, 2 in partition 1, nothing in partition 2."""
    d = deployment
    scheduled = f"{d.prefix}.scheduled"
    config = _write_definition(tmp_path, d.broker, d.prefix, scheduled={"every": "10s"})
    admin = AdminClient({"bootstrap.servers": d.broker})
    admin.create_topics([NewTopic(scheduled, 3, 1)])[scheduled].result(timeout=10)
    _produce_one_batch_each(d.broker, {(scheduled, 0): 4, (scheduled, 1): 2})
    return Deployment(**{**vars(d), "config": config}), scheduled


async def test_status_reads_a_scheduled_resources_run_record_and_what_waits_for_its_next_run(
    scheduled_deployment: tuple[Deployment, str],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d, scheduled = scheduled_deployment
    monkeypatch.setenv("REACH_SYNC_REDIS_URL", redis_url)
    definition = load_definition(d.config)
    group = f"{d.prefix}.scheduled.customers"
    # A run committed 3 of partition 0's 4 keys; partition 1 was never committed.
    _commit(d.broker, group, {(scheduled, 0): 3})
    tick_ms = int(time.time() * 1000) // 10_000 * 10_000
    await _record_a_finished_run(redis_url, definition.redis.key_prefix, tick_ms)

    def meanwhile(_seconds: float) -> None:
        """Between the two samples the run commits the last key of partition 0."""
        _commit(d.broker, group, {(scheduled, 0): 4})

    with StatusReader(definition) as reader:
        report = await asyncio.to_thread(gather, reader, "x", [], 0.0, sleep=meanwhile)

    assert report.earlier is not None
    (before,) = report.earlier.scheduled
    (pending,) = report.now.scheduled
    assert (pending.stage, pending.group) == ("scheduled", group)
    assert [(p.partition, p.committed, p.end, p.lag) for p in pending.partitions] == [
        (0, 4, 4, 0),
        (1, None, 2, 2),  # never committed: all of it waits
        (2, None, 0, 0),
    ]
    assert (before.lag, pending.lag) == (3, 2)
    (run,) = report.runs
    assert (run.resource, run.schedule, run.group) == ("customers", "every 10 s", group)
    assert run.record is not None and run.error is None
    assert (run.record.served_tick_ms, run.record.missed_ticks) == (tick_ms, 3)
    assert (run.record.last.keys, run.record.last.sent, run.record.last.skipped) == (9, 6, 1)
    assert run.next_tick_ms == (report.taken_at_ms // 10_000 + 1) * 10_000
    # The router's and syncer's groups are what they were; the scheduled group was only read.
    assert [g.stage for g in report.now.groups] == ["router", "syncer"]
    assert _committed(d.broker, group, [(scheduled, 1)]) == [-1001]

    lines = render(report)
    assert f"scheduled  customers  every 10 s  group {group}" in lines
    assert "             9 keys, 6 sent, 1 skipped; 3 missed ticks" in lines
    assert any(line.startswith(f"  pending    2 dirty keys on {scheduled}, ") for line in lines)


def test_the_command_shows_a_scheduled_resource_when_redis_does_not_answer(
    scheduled_deployment: tuple[Deployment, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """ENV's Redis is a closed port: the run record is unknown, the ticks and the pending keys
    are shown anyway, and the command still succeeds."""
    d, scheduled = scheduled_deployment
    code, out, err = _run(capsys, "status", "--config", str(d.config), "--interval", "0.1")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    section = lines[
        lines.index(f"scheduled  customers  every 10 s  group {d.prefix}.scheduled.customers") :
    ]
    assert section[1].startswith("  last run   unknown: scheduled run record unavailable (Redis)")
    assert section[2].startswith("  next tick  ")
    assert section[3].startswith(f"  pending    6 dirty keys on {scheduled}, ")


def test_a_missing_scheduled_topic_is_one_line_and_exit_2_and_is_not_created(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    config = _write_definition(tmp_path, d.broker, d.prefix, scheduled={"every": "1h"})
    code, out, err = _run(capsys, "status", "--config", str(config), "--interval", "0.1")
    assert (code, out) == (EXIT_CONFIG, "")
    assert err == (
        f"status: the scheduled topic {d.prefix}.scheduled does not exist (topics.scheduled; "
        "reach-sync run creates it)\n"
    )
    assert f"{d.prefix}.scheduled" not in _topics(d.broker)
