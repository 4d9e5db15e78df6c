"""The pure parts of the load generator: skew, lifecycle, the seeded plan, pacing, accounting."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from reach_devstack.load import (
    DEFAULT_MIX,
    OPERATIONS,
    LoadStats,
    Pacer,
    Planner,
    next_status,
    run_load,
)
from reach_devstack.shop import generate_shop, zipf_rank


def test_zipf_ranks_stay_in_range_and_favour_the_top() -> None:
    n = 1000
    assert zipf_rank(0.0, n, 1.1) == 1
    assert zipf_rank(0.999999, n, 1.1) == n
    assert zipf_rank(0.5, 1, 1.1) == 1
    draws = Counter(zipf_rank(i / 20000, n, 1.1) for i in range(20000))
    assert set(draws) <= set(range(1, n + 1))
    assert draws[1] > draws[10] > draws[100]
    top_share = sum(draws[k] for k in range(1, n // 100 + 1)) / 20000
    assert top_share > 0.15  # the top 1% of customers make well over 1% of the activity


def test_zipf_rank_is_monotonic_in_u_and_exact_for_s_equal_one() -> None:
    ranks = [zipf_rank(i / 1000, 500, 1.0) for i in range(1000)]
    assert ranks == sorted(ranks)
    assert ranks[0] == 1 and ranks[-1] >= 450
    with pytest.raises(ValueError, match="n >= 1"):
        zipf_rank(0.5, 0, 1.1)


def test_transaction_lifecycle() -> None:
    assert next_status("pending", 0.0) == "cancelled"
    assert next_status("pending", 0.99) == "completed"
    assert next_status("completed", 0.5) == "refunded"
    assert next_status("refunded", 0.5) is None
    assert next_status("cancelled", 0.5) is None


def test_the_same_seed_plans_the_same_operations() -> None:
    def plan(seed: int) -> list[tuple[str, float]]:
        planner = Planner(seed)
        return [(p.kind, p.rng.random()) for p in (next(planner) for _ in range(500))]

    assert plan(7) == plan(7)
    assert plan(7) != plan(8)


def test_the_plan_follows_the_mix() -> None:
    planner = Planner(1)
    kinds = Counter(next(planner).kind for _ in range(20000))
    assert set(kinds) == set(OPERATIONS)
    total = sum(DEFAULT_MIX.values())
    for kind, weight in DEFAULT_MIX.items():
        assert kinds[kind] / 20000 == pytest.approx(weight / total, abs=0.015)

    only_inserts = Planner(1, {"customer_insert": 1, "customer_delete": 0})
    assert {next(only_inserts).kind for _ in range(200)} == {"customer_insert"}


def test_a_bad_mix_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown operations"):
        Planner(1, {"customer_explode": 1})
    with pytest.raises(ValueError, match="positive weight"):
        Planner(1, {"customer_insert": 0})


def test_pacer_spaces_starts_evenly() -> None:
    pacer = Pacer(rate=4, start=100.0)
    assert [pacer.next_start(100.0) for _ in range(4)] == [100.0, 100.25, 100.5, 100.75]
    assert pacer.dropped == 0


def test_pacer_catches_up_at_most_max_lag_then_drops() -> None:
    pacer = Pacer(rate=10, start=0.0, max_lag_s=1.0)
    # Ten seconds late: slots older than one second are dropped, the rest are due at once.
    first = pacer.next_start(10.0)
    assert 9.0 <= first <= 9.1
    assert pacer.dropped == 90
    assert pacer.next_start(10.0) == pytest.approx(first + 0.1)
    with pytest.raises(ValueError, match="rate"):
        Pacer(rate=0, start=0.0)


def test_stats_count_every_outcome_and_report_the_rate() -> None:
    stats = LoadStats(elapsed_s=2.0)
    stats.done["customer_insert"] += 6
    stats.missed["customer_delete"] += 1
    stats.conflicts["transaction_move"] += 1
    stats.commits = 6
    assert stats.operations == 8
    assert stats.rate == 4.0
    assert "8 ops (4.0/s, target 5/s)" in stats.summary(5)
    assert str(stats).startswith("8 operations in 2.0 s (4.0/s), 6 commits, 1 missed")
    stats.dropped = 3
    assert "3 slots dropped" in stats.summary(5)
    assert LoadStats().rate == 0.0


def test_run_load_refuses_impossible_runs_before_connecting() -> None:
    with pytest.raises(ValueError, match="seconds"):
        run_load("postgresql://nowhere.invalid/x", rate=10, seconds=0)
    with pytest.raises(ValueError, match="concurrency"):
        run_load("postgresql://nowhere.invalid/x", rate=10, seconds=1, concurrency=0)
    with pytest.raises(ValueError, match="seconds"):
        run_load("postgresql://nowhere.invalid/x", rate=10, seconds=-math.inf)


def test_generated_shop_is_deterministic_and_consistent() -> None:
    rows = generate_shop(merchants=3, customers=300, transactions=900, rng_seed=5)
    assert rows == generate_shop(merchants=3, customers=300, transactions=900, rng_seed=5)
    assert rows != generate_shop(merchants=3, customers=300, transactions=900, rng_seed=6)
    assert [m[2] for m in rows.merchants] == ["merchant-1", "merchant-2", "merchant-3"]
    merchant_of = {c[0]: c[1] for c in rows.customers}
    currency_of = {m[0]: m[3] for m in rows.merchants}
    for _tid, merchant, customer, status, amount, currency, created, updated in rows.transactions:
        assert merchant == merchant_of[customer]
        assert currency == currency_of[merchant]
        assert status in {"pending", "completed", "refunded", "cancelled"}
        assert isinstance(amount, int) and amount > 0
        assert updated >= created  # type: ignore[operator]
    buyers = Counter(t[2] for t in rows.transactions)
    assert len(buyers) < 300  # some customers never buy: those are the deletable ones
    assert buyers.most_common(1)[0][1] > 900 / 300 * 5  # and a few buy a lot
