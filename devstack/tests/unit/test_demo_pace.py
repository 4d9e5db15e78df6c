"""The demo's headline: the workload's share done and ETA, then the backlog's, with rates."""

from __future__ import annotations

from reach_devstack.demo import Pace, every_stage_consuming, pace_line

from consumer.cli.status_report import ServiceHealth, parse_readyz


def test_during_the_workload_its_share_and_eta_come_from_its_fixed_duration() -> None:
    before, now = Pace(10.0, 100, 40, 90), Pace(12.0, 200, 100, 180)
    assert (
        pace_line(before, now, elapsed=12.0, seconds=30.0, load_running=True, backlog=5)
        == "workload 40% · ETA 18 s · in 50.0 events/s · sent 30.0 records/s"
    )


def test_after_the_workload_the_backlog_drains_at_the_rate_the_syncer_takes_keys() -> None:
    before, now = Pace(40.0, 1000, 800, 700), Pace(41.0, 1000, 850, 800)
    assert (
        pace_line(before, now, elapsed=41.0, seconds=30.0, load_running=False, backlog=300)
        == "workload done · catching up: backlog 300, ~3 s left · in 0.00 events/s · "
        "sent 50.0 records/s"
    )
    stalled = pace_line(now, now, elapsed=41.0, seconds=30.0, load_running=False, backlog=250)
    assert stalled.startswith("workload done · catching up: backlog 250 · in -")
    done = pace_line(before, now, elapsed=41.0, seconds=30.0, load_running=False, backlog=0)
    assert done.startswith("workload done · caught up · ")


def test_the_workload_waits_until_every_stage_has_partitions_not_only_the_first() -> None:
    url = "http://127.0.0.1:1/readyz"

    def readyz(router: int, syncer: int) -> ServiceHealth:
        body = {
            "ready": router + syncer > 0,
            "stages": {
                "router": {"assigned_partitions": router},
                "syncer": {"assigned_partitions": syncer},
            },
        }
        return parse_readyz(url, body)

    assert not every_stage_consuming(readyz(0, 0))
    assert not every_stage_consuming(readyz(8, 0))  # ready already, the syncer still joining
    assert every_stage_consuming(readyz(8, 8))
    unavailable = {"ready": False, "reasons": ["state unavailable"]}
    assert not every_stage_consuming(parse_readyz(url, unavailable))
    assert not every_stage_consuming(ServiceHealth(url, error="no answer (connection refused)"))
