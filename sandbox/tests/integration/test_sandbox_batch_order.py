"""The order of a tenant's batches on the real sandbox: arrival order by default, shuffled with a
seed behind a switch (config or admin API), and the version history showing the real order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from reach_sandbox.config import BatchConfig, BatchOrderConfig
from reach_sandbox.testing import (
    SandboxFactory,
    SandboxServer,
    running_sandbox,
    sandbox_config,
)

BATCH = "/api/resources/customers/batch"
ORDER = "/_admin/batch-order"
# Each tenant draws from random.Random(seed), only when it has a choice: with two batches
# queued, Random(7).randrange(2) == 1 takes the later one first, Random(1).randrange(2) == 0 not.
LATER_FIRST_SEED = 7
ARRIVAL_SEED = 1
# Long enough that two batches posted back to back are queued together on a loaded machine.
GATHER_S = 1.5


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
        yield server


@pytest.fixture
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    servers = SandboxFactory(tmp_path_factory.mktemp("factory"))
    try:
        yield servers
    finally:
        servers.close()


def _set_order(sandbox: SandboxServer, **settings: Any) -> dict[str, Any]:
    with sandbox.admin() as admin:
        found: dict[str, Any] = admin.put(ORDER, json=settings).raise_for_status().json()
        return found


def _two_writes_of_one_customer(sandbox: SandboxServer, tenant: str) -> dict[str, Any]:
    """Post two batches writing the same customer, back to back; report their statuses right
    after, and which email each version in the history carries, in apply order."""
    with sandbox.client(tenant) as api, sandbox.admin() as admin:
        ids = [
            api.post(
                BATCH, json={"resources": [{"customerId": "c1", "email": f"{name}@example.com"}]}
            )
            .raise_for_status()
            .json()["data"]["batchId"]
            for name in ("first", "second")
        ]
        queued = [admin.get(f"/_admin/batches/{b}").json()["batch"]["status"] for b in ids]
    for batch_id in ids:
        assert sandbox.wait_batch(tenant, batch_id)["status"] == "success"
    history = sandbox.history(tenant, "customers", "c1")
    return {
        "queued": queued,
        "applied": [v["data"]["email"].split("@")[0] for v in history],
        "batches": [v["batchId"] for v in history],
        "ids": ids,
        "arrived": [v["arrivedAt"] for v in history],
    }


def test_arrival_order_is_the_default_even_for_batches_queued_together(
    sandbox: SandboxServer,
) -> None:
    with sandbox.admin() as admin:
        default = admin.get(ORDER).raise_for_status().json()
    tenant = sandbox.new_tenant()
    # A held first batch makes the next ones queue behind it, all at once.
    sandbox.add_fault(kind="batch_delay", seconds=0.5, tenant=tenant, count=1)
    try:
        with sandbox.client(tenant) as api:
            ids = [
                api.post(
                    BATCH, json={"resources": [{"customerId": "c1", "email": f"v{n}@example.com"}]}
                ).json()["data"]["batchId"]
                for n in range(6)
            ]
        for batch_id in ids:
            sandbox.wait_batch(tenant, batch_id)
    finally:
        sandbox.clear_faults()
    history = sandbox.history(tenant, "customers", "c1")

    assert default["shuffle"] is False and default["gather_seconds"] == 0.25
    assert isinstance(default["seed"], int)  # none configured: a fresh one, shown to replay it
    assert [v["batchId"] for v in history] == ids


def test_shuffled_batches_queued_together_apply_out_of_order_as_the_seed_says(
    sandbox: SandboxServer,
) -> None:
    try:
        shown = _set_order(sandbox, shuffle=True, seed=LATER_FIRST_SEED, gather_seconds=GATHER_S)
        later_first = [_two_writes_of_one_customer(sandbox, sandbox.new_tenant()) for _ in "ab"]
        # The same seed again restarts the draws: a tenant already used repeats its order.
        _set_order(sandbox, shuffle=True, seed=LATER_FIRST_SEED, gather_seconds=GATHER_S)
        again = _two_writes_of_one_customer(sandbox, sandbox.new_tenant())
        _set_order(sandbox, shuffle=True, seed=ARRIVAL_SEED, gather_seconds=GATHER_S)
        kept = _two_writes_of_one_customer(sandbox, sandbox.new_tenant())
    finally:
        restored = _set_order(sandbox)

    assert shown == {"shuffle": True, "seed": LATER_FIRST_SEED, "gather_seconds": GATHER_S}
    for run in (*later_first, again):
        assert run["queued"] == ["pending", "pending"]
        # The later-submitted batch applied first: the older state landed last (a stale
        # overwrite), and the history says so in its own order.
        assert run["applied"] == ["second", "first"], run
        assert run["batches"] == run["ids"][::-1]
        assert run["arrived"] != sorted(run["arrived"])
    assert kept["queued"] == ["pending", "pending"]
    assert kept["applied"] == ["first", "second"], kept
    assert restored["shuffle"] is False


def test_the_order_comes_from_the_config_and_a_reset_restores_it(
    factory: SandboxFactory,
) -> None:
    order = BatchOrderConfig(shuffle=True, seed=LATER_FIRST_SEED, gather_seconds=GATHER_S)
    sandbox = factory.start(sandbox_config(batches=BatchConfig(order=order)))
    with sandbox.admin() as admin:
        configured = admin.get(ORDER).json()
    shuffled = _two_writes_of_one_customer(sandbox, "merchant-1")
    changed = _set_order(sandbox, shuffle=True, seed=ARRIVAL_SEED, gather_seconds=GATHER_S)
    with sandbox.client("merchant-2") as api, sandbox.admin() as admin:
        # Still gathering when the reset comes: it is dropped, never applied.
        api.post(BATCH, json={"resources": [{"customerId": "dropped"}]}).raise_for_status()
        admin.post("/_admin/reset").raise_for_status()
        idle = admin.post("/_admin/wait-idle", params={"timeoutSeconds": 5}).json()
        after_reset = admin.get(ORDER).json()
        kept = api.post(BATCH, json={"resources": [{"customerId": "kept"}]}).json()["data"]
        sandbox.wait_batch("merchant-2", kept["batchId"])
        stored = admin.get("/_admin/resources", params={"tenant": "merchant-2"}).json()

    assert configured == {"shuffle": True, "seed": LATER_FIRST_SEED, "gather_seconds": GATHER_S}
    assert shuffled["applied"] == ["second", "first"], shuffled
    assert changed["seed"] == ARRIVAL_SEED
    assert idle == {"idle": True, "queuedBatches": 0}
    assert after_reset == configured
    assert [r["data"]["customerId"] for r in stored["resources"]] == ["kept"]


def test_invalid_batch_orders_are_refused(sandbox: SandboxServer) -> None:
    with sandbox.admin() as admin:
        before = admin.get(ORDER).json()
        answers = [
            admin.put(ORDER, json=body)
            for body in (
                {"shuffle": "yes"},
                {"gather_seconds": -0.1},
                {"gather_seconds": 60},
                {"seed": 1.5},
                {"shufle": True},
            )
        ]
        after = admin.get(ORDER).json()

    assert [a.status_code for a in answers] == [400] * 5
    assert [a.json()["errors"][0]["field"] for a in answers] == [
        "shuffle",
        "gather_seconds",
        "gather_seconds",
        "seed",
        "shufle",
    ]
    assert after == before
