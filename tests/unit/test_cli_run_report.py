"""What ``reach-sync run`` reports: a periodic progress line in the log, and on the way out the
counters of every stage it ran (the router's included) as one JSON line on stderr."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.cli import commands
from consumer.cli.main import main
from consumer.cli.run_report import (
    ProgressLog,
    RunSample,
    final_stats,
    progress_line,
    stage_counters,
)
from consumer.router.loop import RouterStats
from consumer.service import ServiceStats
from tests.shop_definition import EXAMPLE, OFFLINE_ENV


def _stats() -> ServiceStats:
    stats = ServiceStats()
    stats.router = RouterStats(
        events=1200, changes=1100, ignored=Counter({"heartbeat": 100}), dirty_keys=900, batches=3
    )
    stats.syncer.dirty_keys = 880
    stats.syncer.sent = 700
    stats.syncer.skipped = 150
    stats.syncer.deleted = 30
    stats.syncer.in_flight = 20
    stats.syncer.latencies_ms.extend([5, 7])
    return stats


def test_the_final_stats_carry_every_stage_that_ran_the_syncer_first() -> None:
    stats = _stats()
    both = final_stats(stats, "all")
    assert list(both) == ["syncer", "router"]
    assert json.dumps(both).startswith('{"syncer"')  # what scripts look for
    assert both["router"]["events"] == 1200
    assert both["router"]["dirty_keys"] == 900
    assert both["router"]["ignored"] == {"heartbeat": 100}
    assert both["syncer"]["sent"] == 700
    assert "latencies_ms" not in both["syncer"]
    assert list(final_stats(stats, "syncer")) == ["syncer"]
    assert list(final_stats(stats, "router")) == ["router"]


def test_a_router_that_reported_nothing_has_no_counters() -> None:
    assert final_stats(ServiceStats(), "router") == {"router": {}}
    assert stage_counters(None) == {}


def test_the_progress_line_has_totals_rates_and_the_backlog() -> None:
    before = RunSample(at=100.0, events=0, taken=0)
    now = RunSample.of(_stats(), at=130.0)
    assert progress_line("all", before, now) == (
        "progress: router 1,200 events (40.0/s), 900 dirty keys, 0 dead-lettered; "
        "syncer 880 dirty keys (29.3/s), 700 sent, 150 unchanged, 30 deleted, 0 dead-lettered, "
        "20 in flight; backlog 20"
    )
    assert progress_line("router", before, now) == (
        "progress: router 1,200 events (40.0/s), 900 dirty keys, 0 dead-lettered"
    )
    syncer_only = progress_line("syncer", before, now)
    assert syncer_only.startswith("progress: syncer 880 dirty keys")
    assert "backlog" not in syncer_only  # the router's side is another process's


def test_refused_tenants_are_said_when_there_are_some() -> None:
    stats = _stats()
    stats.syncer.blocked_tenants = 2
    line = progress_line("syncer", RunSample(at=0.0), RunSample.of(stats, at=1.0))
    assert line.endswith("20 in flight, 2 tenants refused")


def test_the_progress_log_writes_a_line_each_interval(caplog: pytest.LogCaptureFixture) -> None:
    stats = _stats()
    reporter = ProgressLog(stats, "all", interval_s=0.01)
    with caplog.at_level(logging.INFO, logger="consumer.cli.run_report"):
        reporter.start()
        try:
            threading.Event().wait(0.2)
        finally:
            reporter.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "consumer.cli.run_report"]
    assert len(lines) >= 2
    assert all(line.startswith("progress: router 1,200 events") for line in lines)


@pytest.fixture
def fake_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """``run`` with a service that returns at once, having done what ``_stats`` says."""
    import consumer.service

    calls: list[dict[str, Any]] = []

    def run_service(definition: object, stop: threading.Event, **kwargs: Any) -> ServiceStats:
        calls.append(kwargs)
        stats: ServiceStats = kwargs["stats"]
        done = _stats()
        stats.router, stats.syncer = done.router, done.syncer
        return stats

    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(consumer.service, "run_service", run_service)
    monkeypatch.setattr(consumer.service, "install_stop_signals", lambda stop: None)
    monkeypatch.setattr(commands, "abandoned_consumers", lambda: 0)
    # No source database here: the startup check against it is tested in tests/integration.
    monkeypatch.setattr(commands, "check_source", lambda definition, path: None)
    # Nor Reach: the startup check against its schemas is tested in tests/integration.
    monkeypatch.setattr(commands, "check_reach", lambda definition, path: None)
    # Nor the process-wide settings, which would stay with the test run: they are tested in a
    # fresh interpreter (test_process_tuning.py), and that run makes them below.
    monkeypatch.setattr(commands, "tune_malloc", lambda: None)
    monkeypatch.setattr(commands, "tune_gc", lambda: None)
    level = logging.getLogger().level
    try:
        yield calls
    finally:
        logging.getLogger().setLevel(level)  # run sets it for the process


def test_run_tunes_its_collector_once_before_the_service_starts(
    fake_service: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    services_started_by_then: list[int] = []
    monkeypatch.setattr(
        commands, "tune_gc", lambda: services_started_by_then.append(len(fake_service))
    )
    assert main(["run", str(EXAMPLE)]) == 0
    assert services_started_by_then == [0]
    assert len(fake_service) == 1


def test_run_prints_the_routers_counters_with_the_syncers(
    fake_service: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(EXAMPLE)]) == 0
    assert fake_service[0]["role"] == "all"
    final = [line for line in capsys.readouterr().err.splitlines() if line.startswith('{"syncer"')]
    report = json.loads(final[-1])
    assert report["router"]["events"] == 1200
    assert report["syncer"]["sent"] == 700


def test_run_logs_at_info_by_default(
    fake_service: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(EXAMPLE), "--role", "router"]) == 0
    assert logging.getLogger().level == logging.INFO
    assert main(["-v", "run", "--config", str(EXAMPLE), "--role", "router"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    final = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert json.loads(final[-1]) == {"router": final_stats(_stats(), "router")["router"]}
