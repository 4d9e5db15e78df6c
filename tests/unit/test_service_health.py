"""The service's readiness wiring without any server behind it: the stages' trackers and the
dependency probe feed /readyz; a health port that cannot be bound is a configuration error."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from reach_devstack.process import free_port

from consumer.config import HealthSettings
from consumer.errors import ConfigurationError
from consumer.observe.progress import PartitionProgress
from consumer.observe.readiness import PROBE_STALE_S, DependencyProbe, ServiceReadiness
from tests.shop_definition import shop_definition


def _readyz(port: int) -> tuple[int, dict[str, object]]:
    answer = httpx.get(f"http://127.0.0.1:{port}/readyz")
    return answer.status_code, answer.json()


def test_a_router_is_ready_once_its_loop_reports_partitions_and_not_while_stopping() -> None:
    definition = shop_definition()
    stop = threading.Event()
    readiness = ServiceReadiness(HealthSettings(port=0), definition, "router", stop)
    port = readiness.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        status, body = _readyz(port)
        assert (status, body["reasons"]) == (503, ["no partitions assigned"])
        assert readiness.router is not None and readiness.syncer_progress is None
        readiness.router.observe([PartitionProgress("t", 0, 5, 5)], time.monotonic())
        status, body = _readyz(port)
        assert (status, body["ready"], body["assigned_partitions"]) == (200, True, 1)
        # A router checks neither Reach nor Redis nor the database: it uses none of them.
        assert (body["reach_ok"], body["redis_ok"], body["database_ok"]) == (True, True, True)
        stop.set()
        assert _readyz(port)[1]["reasons"] == ["stopping"]
    finally:
        readiness.close()


def test_a_port_in_use_is_a_configuration_error_naming_health() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"health: cannot listen on 127.0.0.1:{port}"):
            ServiceReadiness(HealthSettings(port=port), shop_definition(), "all", threading.Event())


def test_unreachable_dependencies_are_reported_and_a_stale_check_counts_as_failed() -> None:
    closed = free_port()  # nothing listens there
    definition = shop_definition(
        REACH_SYNC_REDIS_URL=f"redis://127.0.0.1:{closed}/0",
        REACH_SYNC_DATABASE_URL=f"postgresql://reach:pw@127.0.0.1:{closed}/shop",
    )
    probe = DependencyProbe(definition)
    now = time.monotonic()
    assert probe.ok("redis", now) and probe.ok("database", now)  # not checked yet
    probe.start()
    try:
        deadline = time.monotonic() + 10
        while probe.ok("redis", time.monotonic()) or probe.ok("database", time.monotonic()):
            assert time.monotonic() < deadline, "the probe never reported the closed port"
            time.sleep(0.05)
    finally:
        probe.close()
    unstarted = DependencyProbe(definition)  # never checked: fine at first, failed once stale
    assert not unstarted.ok("redis", time.monotonic() + PROBE_STALE_S + 1)
    unstarted.close()
