"""The chaos run's fleet (reach_devstack/chaos/fleet.py): which process a fault hits, and when a
restarted router joined its group."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from reach_devstack.chaos.fleet import Fleet


def _fleet(tmp_path: Path) -> Fleet:
    return Fleet.of(2, 2, tmp_path / "sync.yaml", {}, tmp_path, tmp_path)


def test_a_fault_whose_chosen_process_is_busy_hits_the_next_free_one_of_its_roles(
    tmp_path: Path,
) -> None:
    fleet = _fleet(tmp_path)
    assert fleet.pick(0.6, ("syncer",)).name == "syncer-2"
    assert fleet.pick(0.6, ("syncer",), busy={"syncer-2"}).name == "syncer-1"
    assert fleet.pick(0.1, busy={"router-1"}).name == "router-2"
    # All of them busy: the chosen one, and the fault is skipped as before.
    assert fleet.pick(0.6, ("syncer",), busy={"syncer-1", "syncer-2"}).name == "syncer-2"


def test_a_router_has_joined_its_group_when_its_current_log_says_it_subscribed(
    tmp_path: Path,
) -> None:
    router = _fleet(tmp_path).routers()[0]
    assert router.subscribed_at() is None  # never started
    first, second = tmp_path / "router-1.1.log", tmp_path / "router-1.2.log"
    at = datetime(2026, 12, 5, 17, 0, 0, 250_000, tzinfo=UTC)
    line = {"ts": at.isoformat(timespec="milliseconds"), "msg": "router subscribed to [x]"}
    first.write_text(json.dumps(line) + "\n")
    second.write_text(
        '{"ts": "2026-12-05T17:00:01.000+00:00", "msg": "waiting for the database"}\n'
    )
    router.log_paths += [first, second]
    # The restarted process (the last log) has not subscribed yet, whatever the first one did.
    assert router.subscribed_at() is None
    with second.open("a") as log:
        log.write(json.dumps({**line, "ts": "2026-12-05T17:00:09.500+00:00"}) + "\n")
    assert router.subscribed_at() == datetime(2026, 12, 5, 17, 0, 9, 500_000, UTC).timestamp()
