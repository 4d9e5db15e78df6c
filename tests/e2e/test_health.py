"""/readyz on the real stack: ready once partitions are assigned; not ready while Reach fails
every request (its circuit open) or while the syncer cannot finish a window with lag behind it;
ready again after each, and the changes made meanwhile arrive.

Reach fails through the sandbox's fault board (a 503 for every API request), with a circuit
breaker that opens after 1 s (``destination.circuit_breaker`` in this test's definition). The
stall is a lock: a transaction holds ``merchants`` in ACCESS EXCLUSIVE mode, so every recompute
query (both join it) waits, while updates of a customer's name (which do not touch
``merchants``: its key is unchanged) keep flowing through Debezium and the router. The probe's
``SELECT 1`` still answers, so the database counts as reachable and the stall is what /readyz
reports. Rolling the transaction back lets the waiting queries finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from reach_devstack.stack import StackEndpoints

from tests.e2e.conftest import EXAMPLE
from tests.e2e.helpers import Sandbox, insert_customer, wait_for
from tests.e2e.pressure import pipeline_from

STALL_AFTER_S = 5.0
SETTINGS: dict[str, Any] = {
    "destination": {"circuit_breaker": {"open_after_s": 1.0, "probe_interval_s": 0.5}},
    "health": {"port": 0, "stall_after_s": STALL_AFTER_S},
}
REACH_DOWN = {"kind": "error", "status": 503, "path_prefix": "/api/", "message": "down"}
WAIT_S = 120.0
TOUCH_EVERY_S = 1.0


def _definition(directory: Path, name: str) -> Path:
    """examples/shop.yaml with this test's circuit breaker and health port."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["destination"].update(SETTINGS["destination"])
    data["health"] = SETTINGS["health"]
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _readyz(base: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{base}/readyz", timeout=5)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def _ready(base: str) -> dict[str, Any] | None:
    status, body = _readyz(base)
    return body if status == 200 else None


def _caught_up(base: str) -> dict[str, Any] | None:
    """Ready, with nothing left to do: each phase starts from here, so that what the next one
    sees is its own doing (a window still backing off from the last phase lags too)."""
    body = _ready(base)
    return body if body is not None and body["lag"] == 0 else None


def _not_ready_because(base: str, words: str) -> dict[str, Any] | None:
    status, body = _readyz(base)
    return body if status == 503 and any(words in r for r in body["reasons"]) else None


class Renamer:
    """Changes one customer's first name at most once every TOUCH_EVERY_S: changes keep coming."""

    def __init__(self, dsn: str, customer: int) -> None:
        self._dsn, self._customer = dsn, customer
        self._n, self._at = 0, 0.0
        self.last = ""

    def __call__(self) -> None:
        if time.monotonic() - self._at < TOUCH_EVERY_S:
            return
        self._n += 1
        self.last = f"Hal {self._n}"
        # A lock timeout: were the update to wait on the test's own lock, fail instead of hang.
        with psycopg.connect(self._dsn, autocommit=True, options="-c lock_timeout=5000") as conn:
            conn.execute(
                "UPDATE customers SET first_name = %s WHERE id = %s", (self.last, self._customer)
            )
        self._at = time.monotonic()


@contextmanager
def _locked(dsn: str, table: str) -> Iterator[None]:
    """``table`` locked against every reader until the block ends (rolled back, however)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def _while(touch: Callable[[], None], probe: Callable[[], Any]) -> Callable[[], Any]:
    def both() -> Any:
        touch()
        return probe()

    return both


@pytest.mark.timeout(600)
def test_readyz_turns_not_ready_when_reach_fails_or_consumption_stalls_and_back(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    sandbox = Sandbox.of(shop_stack)
    dsn = shop_stack.postgres_dsn
    name = unique("health")
    customer, tenant = insert_customer(dsn, 1, f"{name}@example.com", first_name="Hal")
    rename = Renamer(dsn, customer)

    def arrived() -> bool:
        current = sandbox.current(tenant, "shop_customers", str(customer))
        return current is not None and current.get("firstName") == rename.last

    with pipeline_from(shop_stack, name, _definition(tmp_path, name)) as running:
        port = wait_for(lambda: running.stats.health_port, 30, "the health port")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
        # Ready with partitions in either stage (with more processes than source partitions, a
        # router may have none); here both get theirs, and catch up with the seeded shop.
        wait_for(
            lambda: (
                (body := _caught_up(base))
                and all(s["assigned_partitions"] > 0 for s in body["stages"].values())
            ),
            WAIT_S,
            "ready and caught up, with partitions in both stages",
            guard=running.check_alive,
        )

        # Reach fails every request while the customer keeps changing: the circuit opens.
        with sandbox.faults(REACH_DOWN):
            body = wait_for(
                _while(rename, lambda: _not_ready_because(base, "Reach")),
                WAIT_S,
                "not ready because of Reach",
                guard=running.check_alive,
            )
            print(f"Reach failing: {body}")
            assert body["reach_ok"] is False, body
        # The fault is gone: the next probe closes the circuit, the held-up windows finish.
        wait_for(lambda: _caught_up(base), WAIT_S, "caught up again", guard=running.check_alive)
        wait_for(arrived, WAIT_S, "the renames made while Reach failed", guard=running.check_alive)

        # Consumption stalls with lag: the recompute queries wait on a lock.
        with _locked(dsn, "merchants"):
            body = wait_for(
                _while(rename, lambda: _not_ready_because(base, "no progress")),
                WAIT_S,
                "not ready because of a stall",
                guard=running.check_alive,
            )
            print(f"stalled: {body}")
            assert body["lag"] > 0, body
            assert (body["reach_ok"], body["redis_ok"], body["database_ok"]) == (True,) * 3, body
            assert body["stages"]["syncer"]["no_progress_for_s"] >= STALL_AFTER_S, body  # rounded
        wait_for(lambda: _caught_up(base), WAIT_S, "caught up again", guard=running.check_alive)
        wait_for(arrived, WAIT_S, "the renames made during the stall", guard=running.check_alive)
        print(f"last /readyz: {_readyz(base)}")
