"""Held entities and blocked tenants: the commit rule, release and probes, the probe schedule.

Delivery's side (what is held, what a probe sends) runs against the sandbox in
tests/integration/test_delivery.py; the whole story on the real stack in
tests/e2e/test_refused_tenant.py.
"""

from __future__ import annotations

from collections.abc import Callable

from consumer.config import TenantProbe
from consumer.errors import ConfigurationError, Retryable
from consumer.router.dirty import Cause, DirtyKey
from consumer.sink.tenant_gate import OPEN, PROBE, Closed, TenantBlocks, blocks_tenant
from consumer.syncer.held import HeldEntities
from consumer.syncer.windows import Window

REVOKED = ConfigurationError("403: tenant not accessible", status=403, scope="tenant or credential")


def _window(*entries: tuple[str, int, int], held: dict[int, set[str]] | None = None) -> Window:
    """A finished window of ``(resource, id, offset)``; ``held``: id -> tenants that refused it."""
    window = Window(opened_at=0.0, due_after_s=1.0)
    for resource, entity_id, offset in entries:
        key = DirtyKey(resource, entity_id, Cause(kind="cdc", offset=offset))
        window.add(key, offset, window_s=0.5)
    for entity_id, tenants in (held or {}).items():
        for tenant in tenants:
            window.hold("customers", [str(entity_id)], tenant)
    return window


def _blocked(*tenants: str) -> Callable[[str], bool]:
    return lambda tenant: tenant in tenants


# --- the commit rule ------------------------------------------------------------------------------


def test_commits_stop_at_the_lowest_offset_still_held() -> None:
    held = HeldEntities()
    held.settle(_window(("customers", 1, 10), ("customers", 2, 11), ("customers", 3, 12)))
    assert len(held) == 0 and held.commit_offset(13) == 13

    held.settle(_window(("customers", 4, 13), ("customers", 5, 14), held={5: {"m2"}}))
    held.settle(_window(("customers", 6, 15), ("customers", 7, 16), held={6: {"m2"}}))
    assert len(held) == 2
    assert held.commit_offset(17) == 14  # 5 was carried by 14: a restart reads it again
    assert held.commit_offset(None) is None


def test_an_entity_held_again_keeps_its_first_offset_and_a_later_outcome_lets_it_go() -> None:
    held = HeldEntities()
    held.settle(_window(("customers", 5, 14), held={5: {"m2"}}))
    held.settle(_window(("customers", 5, 30), ("customers", 8, 31), held={5: {"m2"}}))
    assert held.commit_offset(32) == 14
    # A later window settled it (sent its current state): nothing older needs reading again.
    held.settle(_window(("customers", 5, 40)))
    assert len(held) == 0 and held.commit_offset(41) == 41


def test_released_entities_still_count_until_their_window_settles_them() -> None:
    held = HeldEntities()
    held.settle(_window(("customers", 5, 14), ("customers", 6, 15), held={5: {"m2"}, 6: {"m2"}}))
    assert held.release(_blocked("m2"), limit=10) == []  # still refused

    released = held.release(_blocked(), limit=1)  # m2 accepted again; one window's worth
    assert [entity for entity, _ in released] == [("customers", "5")]
    assert held.in_window() == {"m2"}
    assert held.commit_offset(20) == 14 and len(held) == 2

    window = Window(opened_at=0.0, due_after_s=1.0)
    for entity, back in released:
        window.readd(entity, back.entity_id, back.causes, back.offset, 0.5)
    assert window.offsets == {("customers", "5"): 14} and window.end_offset == -1
    held.settle(window)  # sent
    assert held.commit_offset(20) == 15 and held.in_window() == set()


def test_a_probe_takes_one_entity_of_its_tenant_only() -> None:
    held = HeldEntities()
    held.settle(
        _window(
            ("customers", 1, 1),
            ("customers", 2, 2),
            ("customers", 3, 3),
            held={1: {"m1"}, 2: {"m2"}, 3: {"m2"}},
        )
    )
    assert held.take_probe("m9") is None
    probe = held.take_probe("m2")
    assert probe is not None and probe[0] == ("customers", "2")
    assert held.in_window() == {"m2"}
    assert held.by_tenant() == {"m1": 1, "m2": 2}


def test_an_entity_refused_by_two_tenants_is_released_when_either_accepts() -> None:
    held = HeldEntities()
    held.settle(_window(("customers", 1, 7), held={1: {"m1", "m2"}}))
    assert held.release(_blocked("m1", "m2"), limit=10) == []
    assert [e for e, _ in held.release(_blocked("m1"), limit=10)] == [("customers", "1")]


# --- the tenant gate ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _gate() -> tuple[TenantBlocks, Clock]:
    clock = Clock()
    return TenantBlocks(TenantProbe(interval_s=30, max_interval_s=100), clock, clock), clock


def test_which_errors_block_a_tenant() -> None:
    assert blocks_tenant(REVOKED)
    assert blocks_tenant(ConfigurationError("401", status=401, scope="tenant or credential"))
    assert blocks_tenant(ConfigurationError("bad tenant name", scope="tenant"))
    assert not blocks_tenant(ConfigurationError("unknown schema", status=404, scope="schema"))
    assert not blocks_tenant(ConfigurationError("redirect", status=302, scope="api contract"))
    assert not blocks_tenant(Retryable("503"))
    assert not blocks_tenant(None)


def test_a_refusal_blocks_its_tenant_alone_until_a_probe_is_accepted() -> None:
    gate, clock = _gate()
    assert gate.admit("m2") is OPEN
    gate.report("m2", OPEN, REVOKED)
    gate.report("m2", OPEN, REVOKED)  # its other requests in flight: one block, one alert
    assert list(gate.snapshot()) == ["m2"]
    assert gate.admit("m1") is OPEN
    assert gate.admit("m2") == Closed(REVOKED)
    assert gate.due() == []

    clock.now = 30.0
    assert gate.due() == ["m2"]
    assert gate.admit("m2") is PROBE
    assert gate.admit("m2") == Closed(REVOKED)  # one probe at a time
    assert gate.due() == []
    gate.report("m2", PROBE, None)
    assert not gate.is_blocked("m2") and gate.admit("m2") is OPEN


def test_refused_probes_back_off_to_the_cap_and_inconclusive_ones_do_not_count() -> None:
    gate, clock = _gate()
    gate.report("m2", OPEN, REVOKED)
    waits = []
    for _ in range(4):
        clock.now = gate.snapshot()["m2"].probe_at
        assert gate.admit("m2") is PROBE
        gate.report("m2", PROBE, REVOKED)
        waits.append(gate.snapshot()["m2"].probe_at - clock.now)
    assert waits == [60.0, 100.0, 100.0, 100.0]
    assert gate.snapshot()["m2"].probes == 4

    clock.now = gate.snapshot()["m2"].probe_at
    assert gate.admit("m2") is PROBE
    gate.report("m2", PROBE, Retryable("503"))  # Reach failed: nothing learned about m2
    assert gate.snapshot()["m2"].probes == 4 and gate.is_blocked("m2")


def test_an_open_success_does_not_unblock_only_a_probe_does() -> None:
    gate, _ = _gate()
    gate.report("m2", OPEN, REVOKED)
    gate.report("m2", OPEN, None)  # a request admitted before the block answered late
    assert gate.is_blocked("m2")
