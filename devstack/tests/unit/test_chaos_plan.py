"""The chaos run's schedule (reach_devstack/chaos/plan.py): seeded, complete, and within its
bounds."""

from __future__ import annotations

from reach_devstack.chaos.plan import CYCLE_KINDS, FAULT_SECONDS, ChaosPlan, schedule


def test_a_seed_replays_the_same_schedule_and_another_seed_does_not() -> None:
    assert schedule(ChaosPlan(seed=7), 300.0) == schedule(ChaosPlan(seed=7), 300.0)
    assert schedule(ChaosPlan(seed=7), 300.0) != schedule(ChaosPlan(seed=8), 300.0)


def test_every_kind_runs_at_least_once_even_in_a_short_run() -> None:
    for durable in (False, True):
        plan = ChaosPlan(seed=3, durable_broker=durable)
        faults = schedule(plan, horizon_s=20.0)
        assert {f.kind for f in faults} == {*plan.cycle_kinds(), "kill"}
    assert set(ChaosPlan(durable_broker=True).cycle_kinds()) == set(CYCLE_KINDS)


def test_kills_come_at_most_ten_seconds_apart_over_the_whole_horizon() -> None:
    kills = [f.at_s for f in schedule(ChaosPlan(seed=11), 600.0) if f.kind == "kill"]
    gaps = [b - a for a, b in zip([0.0, *kills], kills, strict=False)]
    assert max(gaps) <= 10.0
    assert 600.0 - kills[-1] <= 10.0


def test_faults_are_in_time_order_and_last_as_long_as_their_kind_says() -> None:
    faults = schedule(ChaosPlan(seed=5), 400.0)
    assert [f.at_s for f in faults] == sorted(f.at_s for f in faults)
    for fault in faults:
        low, high = FAULT_SECONDS.get(fault.kind, (0.0, 0.0))
        assert low <= fault.seconds <= high, fault
        assert 0.0 <= fault.pick < 1.0


def test_without_the_durable_broker_the_broker_is_never_restarted() -> None:
    faults = schedule(ChaosPlan(seed=2, durable_broker=False), 900.0)
    assert "broker_restart" not in {f.kind for f in faults}
    assert {f.kind for f in faults} == {*CYCLE_KINDS, "kill"} - {"broker_restart"}


def test_a_long_run_goes_through_the_cycle_again() -> None:
    plan = ChaosPlan(seed=9)
    faults = schedule(plan, 3600.0)
    per_kind = {k: sum(1 for f in faults if f.kind == k) for k in plan.cycle_kinds()}
    assert min(per_kind.values()) >= 2, per_kind


def test_kills_go_on_until_the_first_cycle_is_through_in_a_short_run() -> None:
    faults = schedule(ChaosPlan(seed=4), horizon_s=30.0)
    cycle_end = max(f.at_s + f.seconds for f in faults if f.kind != "kill")
    kills = [f.at_s for f in faults if f.kind == "kill"]
    assert cycle_end > 100.0
    assert cycle_end - kills[-1] <= 10.0
