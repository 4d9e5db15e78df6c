"""Readiness from a snapshot, and the two routes over real HTTP on a loopback port."""

from __future__ import annotations

from dataclasses import replace

import httpx

from consumer.observe.health import HealthServer, Snapshot, assess
from consumer.observe.progress import (
    PartitionProgress,
    PartitionState,
    ProgressTracker,
    StageProgress,
)

NOW = 1000.0
FINE = Snapshot(
    assigned_partitions=3,
    reach_ok=True,
    redis_ok=True,
    database_ok=True,
    lag=0,
    last_progress_at=None,
    started_at=NOW - 600,
)


def test_a_healthy_service_is_ready_even_idle() -> None:
    assert assess(FINE, NOW, stall_after_s=60).ready


def test_every_reason_is_listed() -> None:
    broken = replace(FINE, assigned_partitions=0, reach_ok=False, redis_ok=False)
    readiness = assess(broken, NOW, stall_after_s=60)
    assert not readiness.ready
    assert readiness.reasons == (
        "no partitions assigned",
        "Reach is failing (circuit open)",
        "Redis unreachable",
    )


def test_lag_without_recent_progress_is_a_stall() -> None:
    stalled = replace(FINE, lag=500, last_progress_at=NOW - 90)
    assert assess(stalled, NOW, stall_after_s=60).reasons == ("lag 500 and no progress for 90 s",)
    assert assess(replace(stalled, last_progress_at=NOW - 5), NOW, stall_after_s=60).ready
    # Never any progress since start counts from the start.
    assert not assess(replace(FINE, lag=1), NOW, stall_after_s=60).ready


def test_blocked_tenants_are_reported_without_making_the_process_unready() -> None:
    readiness = assess(replace(FINE, blocked_tenants=("merchant-2",)), NOW, stall_after_s=60)
    assert readiness.ready and readiness.details["blocked_tenants"] == ["merchant-2"]


def test_the_routes_over_http() -> None:
    state = {"snapshot": FINE}
    server = HealthServer("127.0.0.1", 0, lambda: state["snapshot"], 60, clock=lambda: NOW)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        state["snapshot"] = replace(FINE, redis_ok=False)
        unready = httpx.get(f"{base}/readyz")
        assert unready.status_code == 503
        assert unready.json()["reasons"] == ["Redis unreachable"]
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.close()


def test_a_snapshot_that_fails_answers_not_ready() -> None:
    def broken() -> Snapshot:
        raise RuntimeError("loop gone")

    server = HealthServer("127.0.0.1", 0, broken, 60)
    server.start()
    try:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        assert answer.status_code == 503 and "loop gone" in answer.json()["reasons"][0]
    finally:
        server.close()


# --- progress, per partition ---------------------------------------------------------------------


def _seen(done: int | None, high: int | None, partition: int = 0) -> PartitionProgress:
    return PartitionProgress("t", partition, done, high)


def test_a_lagging_partition_that_does_not_move_is_lagging_since_it_last_moved() -> None:
    tracker = ProgressTracker("syncer")
    tracker.observe([_seen(10, 10)], now=1.0)  # idle for long: no lag, so no stall clock
    tracker.observe([_seen(10, 10)], now=100.0)  # caught up, last
    tracker.observe([_seen(10, 15)], now=101.0)  # five arrived since
    tracker.observe([_seen(10, 20)], now=150.0)
    view = tracker.view()
    assert (view.assigned, view.lag, view.lagging_since, view.observed_at) == (1, 10, 100.0, 150.0)
    tracker.observe([_seen(12, 20)], now=151.0)  # it moved
    assert tracker.view().lagging_since == 151.0
    tracker.observe([_seen(20, 20)], now=152.0)  # caught up: nothing lags
    assert (tracker.view().lag, tracker.view().lagging_since) == (0, None)


def test_the_oldest_lagging_partition_counts_and_unassigned_ones_are_forgotten() -> None:
    tracker = ProgressTracker("router")
    tracker.observe([_seen(0, 5, 0), _seen(0, 5, 1), _seen(3, 3, 2)], now=10.0)
    tracker.observe([_seen(1, 5, 0), _seen(0, 5, 1), _seen(3, 3, 2)], now=20.0)
    view = tracker.view()
    assert (view.assigned, view.lag, view.lagging_since) == (3, 9, 10.0)  # partition 1 is stuck
    # Each partition is in the view too (reach-sync status shows them), sorted.
    assert view.partitions == (
        PartitionState("t", 0, 1, 4, 20.0),
        PartitionState("t", 1, 0, 5, 10.0),
        PartitionState("t", 2, 3, 0, None),
    )
    details = assess(Snapshot.of([view], started_at=0.0), 25.0, 60).details["stages"]
    assert details["router"]["partitions"][1] == {  # type: ignore[index]
        "topic": "t",
        "partition": 1,
        "done": 0,
        "lag": 5,
        "no_progress_for_s": 15.0,
    }
    tracker.observe([_seen(1, 5, 0)], now=30.0)  # partitions 1 and 2 were revoked
    assert (tracker.view().assigned, tracker.view().lag, tracker.view().lagging_since) == (
        1,
        4,
        20.0,
    )


def test_an_unknown_done_offset_keeps_the_last_known_one() -> None:
    tracker = ProgressTracker("router")
    tracker.observe([_seen(None, 7)], now=1.0)  # nothing consumed yet: no lag known
    assert (tracker.view().assigned, tracker.view().lag) == (1, 0)
    tracker.observe([_seen(4, 7)], now=2.0)
    tracker.observe([_seen(None, 9)], now=3.0)  # rewound after a failed batch: position unknown
    assert (tracker.view().lag, tracker.view().lagging_since) == (5, 2.0)
    tracker.observe([_seen(4, None)], now=4.0)  # no high watermark: no lag known
    assert tracker.view().lag == 0


def test_the_loop_observes_at_most_once_an_interval() -> None:
    tracker = ProgressTracker("syncer", interval_s=1.0)
    assert tracker.due(0.0)
    tracker.observe([], now=0.0)
    assert not tracker.due(0.5) and tracker.due(1.0)
    assert tracker.view() == StageProgress("syncer", 0, 0, None, 0.0)


def test_a_snapshot_of_stages_adds_them_up() -> None:
    router = StageProgress("router", assigned=2, lag=0, lagging_since=None, observed_at=NOW)
    syncer = StageProgress("syncer", assigned=8, lag=30, lagging_since=NOW - 5, observed_at=NOW)
    snapshot = Snapshot.of([router, syncer], started_at=NOW - 600, blocked_tenants=("m-2",))
    assert (snapshot.assigned_partitions, snapshot.lag, snapshot.last_progress_at) == (
        10,
        30,
        NOW - 5,
    )
    assert snapshot.reach_ok and snapshot.blocked_tenants == ("m-2",)
    readiness = assess(snapshot, NOW, stall_after_s=60)
    assert readiness.ready
    assert readiness.details["stages"] == {
        "router": {
            "assigned_partitions": 2,
            "lag": 0,
            "no_progress_for_s": None,
            "last_report_s_ago": 0.0,
            "partitions": [],
        },
        "syncer": {
            "assigned_partitions": 8,
            "lag": 30,
            "no_progress_for_s": 5.0,
            "last_report_s_ago": 0.0,
            "partitions": [],
        },
    }
    assert readiness.details["no_progress_for_s"] == 5.0
    assert readiness.details["uptime_s"] == 600.0


def test_a_stage_whose_loop_stopped_reporting_is_stalled_whatever_its_lag() -> None:
    quiet = StageProgress("syncer", assigned=8, lag=0, lagging_since=None, observed_at=NOW - 61)
    readiness = assess(Snapshot.of([quiet], started_at=NOW - 600), NOW, stall_after_s=60)
    assert readiness.reasons == ("the syncer loop has not run for 61 s",)


def test_a_stopping_service_is_not_ready() -> None:
    readiness = assess(replace(FINE, stopping=True), NOW, stall_after_s=60)
    assert readiness.reasons == ("stopping",)


def test_a_server_closed_before_it_started_closes_at_once() -> None:
    HealthServer("127.0.0.1", 0, lambda: FINE, 60).close()
