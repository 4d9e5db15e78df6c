"""Readiness from a snapshot, and the two routes over real HTTP on a loopback port."""

from __future__ import annotations

from dataclasses import replace

import httpx

from consumer.health import HealthServer, Snapshot, assess

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
