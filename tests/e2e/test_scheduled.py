"""Scheduled delivery on the real stack (Postgres, Debezium, broker, Redis, sandbox), through the
real command: examples/shop.yaml with customers ``delivery: {mode: scheduled, every: 10s}`` and
transactions in real time, in one ``reach-sync run`` process shared by the module (the restart
test comes last: it stops and starts that process).

Ticks are whole multiples of 10 s since the epoch. Each test acts right after a run finished
(read from the run record in Redis), so that its changes are routed well before the next tick;
when a version arrived is the sandbox's ``arrivedAt`` (epoch seconds, this machine's clock).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Message
from reach_devstack.stack import StackEndpoints
from redis.asyncio import Redis

from consumer.config import SyncDefinition
from consumer.router.dirty import dirty_message_key
from consumer.schedule.runs import RunRecord, RunStore
from tests.e2e.conftest import EXAMPLE
from tests.e2e.helpers import (
    PipelineProcess,
    Sandbox,
    Version,
    converged,
    insert_customer,
    insert_transaction,
    read_topic,
    sql,
    wait_for,
)

CUSTOMERS, TRANSACTIONS = "shop_customers", "shop_transactions"
PERIOD_S = 10
# A tick's run is looked for this long at most (the tick, the scheduler's recheck, the run).
RUN_TIMEOUT_S = 3 * PERIOD_S
# What "at once" means for a real-time change: Debezium, the router, one 100 ms window, Reach.
AT_ONCE_S = 5.0


@dataclass
class Shop:
    endpoints: StackEndpoints
    process: PipelineProcess
    definition: SyncDefinition
    sandbox: Sandbox

    @property
    def dsn(self) -> str:
        return self.endpoints.postgres_dsn

    def record(self) -> RunRecord:
        """The customers' run record, as the scheduler wrote it."""

        async def read() -> RunRecord:
            redis: Redis = Redis.from_url(self.definition.redis.url.get_secret_value())
            try:
                return await RunStore(redis, self.definition.redis.key_prefix).read("customers")
            finally:
                await redis.aclose()

        return asyncio.run(read())

    def served(self, tick_ms: int) -> RunRecord:
        """Wait until a run finished serving ``tick_ms`` (or a later tick)."""

        def done() -> RunRecord | None:
            record = self.record()
            finished = record.served_tick_ms is not None and record.served_tick_ms >= tick_ms
            return record if finished and not record.running() else None

        return wait_for(done, RUN_TIMEOUT_S, f"the run of tick {tick_ms}", self.process.check_alive)

    def just_after_a_run(self) -> int:
        """Wait for the next tick's run to finish; return the tick after it (epoch ms), which
        leaves most of a period to act before it."""
        record = self.served(_next_tick_ms(time.time()))
        assert record.served_tick_ms is not None
        upcoming = record.served_tick_ms + PERIOD_S * 1000
        assert time.time() * 1000 < upcoming - 5_000, "the run took most of the period"
        return upcoming

    def new_customer(self) -> tuple[int, str]:
        """A customer of this test alone, once its first version reached the sandbox."""
        customer, tenant = insert_customer(self.dsn, 1, f"{uuid.uuid4().hex[:8]}@example.com")
        wait_for(
            lambda: self.versions(tenant, customer),
            RUN_TIMEOUT_S,
            f"customer {customer}'s first version",
            self.process.check_alive,
        )
        return customer, tenant

    def versions(
        self, tenant: str, customer: int, after_seq: int = 0, schema: str = CUSTOMERS
    ) -> list[Version]:
        return self.sandbox.history(tenant, schema, str(customer), after_seq=after_seq)


def _next_tick_ms(now_s: float) -> int:
    return (int(now_s) // PERIOD_S + 1) * PERIOD_S * 1000


def _scheduled_definition(path: Path) -> Path:
    shop = EXAMPLE.read_text()
    batch = "    delivery:\n      mode: batch\n      window_ms: 500\n"
    assert batch in shop, "examples/shop.yaml's customers delivery changed"
    path.write_text(shop.replace(batch, "    delivery:\n      mode: scheduled\n      every: 10s\n"))
    return path


@pytest.fixture(scope="module")
def shop(shop_stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """One reach-sync process on the scheduled definition, once the sandbox equals the shop."""
    state = tmp_path_factory.mktemp("scheduled")
    config = _scheduled_definition(state / "scheduled.yaml")
    name = f"scheduled_{uuid.uuid4().hex[:10]}"
    process = PipelineProcess(shop_stack, name, state, config=config)
    definition = process.definition
    assert definition.scheduled_resources() == ["customers"]
    assert definition.resources["transactions"].delivery.mode == "realtime"
    process.start()
    try:
        differences = converged(definition, shop_stack, timeout_s=180)
        assert all(d.equal for d in differences), differences
        yield Shop(shop_stack, process, definition, Sandbox.of(shop_stack))
    finally:
        process.ensure_stopped()


def test_a_realtime_change_arrives_at_once_while_the_scheduled_one_waits_for_the_tick(
    shop: Shop,
) -> None:
    customer, tenant = shop.new_customer()
    seq = shop.sandbox.last_version_seq()
    tick_ms = shop.just_after_a_run()

    # A completed sale: the transaction itself (real time), and its customer's lifetime value
    # and order count (scheduled).
    changed_s = time.time()
    sale = insert_transaction(shop.dsn, customer, 12_345, "completed")
    (arrived,) = wait_for(
        lambda: shop.versions(tenant, sale, seq, schema=TRANSACTIONS),
        AT_ONCE_S * 3,
        "the transaction in the sandbox",
        shop.process.check_alive,
    )
    assert arrived["arrivedAt"] - changed_s < AT_ONCE_S
    assert arrived["arrivedAt"] * 1000 < tick_ms
    assert shop.versions(tenant, customer, seq) == [], "the customer went out before its tick"

    shop.served(tick_ms)
    (version,) = shop.versions(tenant, customer, seq)
    assert version["arrivedAt"] * 1000 >= tick_ms
    assert version["data"]["completedOrders"] == 1


def test_a_customer_changed_several_times_between_two_ticks_is_sent_once_per_tick(
    shop: Shop,
) -> None:
    customer, tenant = shop.new_customer()
    seq = shop.sandbox.last_version_seq()
    ticks = []
    for round_ in ("A", "B"):
        tick_ms = shop.just_after_a_run()
        for n in (1, 2, 3):
            sql(
                shop.dsn,
                ("UPDATE customers SET first_name = %s WHERE id = %s", (f"{round_}{n}", customer)),
            )
        ticks.append(tick_ms)
    shop.served(ticks[-1])

    versions = shop.versions(tenant, customer, seq)
    assert [v["data"]["firstName"] for v in versions] == ["A3", "B3"]
    for version, tick_ms in zip(versions, ticks, strict=True):
        assert tick_ms <= version["arrivedAt"] * 1000 < tick_ms + PERIOD_S * 1000


def test_a_restart_between_a_change_and_its_tick_loses_nothing(shop: Shop) -> None:
    customer, tenant = shop.new_customer()
    seq = shop.sandbox.last_version_seq()
    tick_ms = shop.just_after_a_run()
    changed_ms = int(time.time() * 1000)
    sql(shop.dsn, ("UPDATE customers SET first_name = 'Restarted' WHERE id = %s", (customer,)))
    key = dirty_message_key("customers", customer)

    def routed(messages: list[Message]) -> bool:
        return any(m.key() == key and m.timestamp()[1] >= changed_ms for m in messages)

    # Its dirty key waits on the scheduled topic, and the process stops before the tick.
    bootstrap = shop.definition.source.kafka.bootstrap_servers
    read_topic(bootstrap, shop.definition.topics.scheduled, routed, timeout_s=7.0)
    assert shop.process.terminate() == 0
    assert time.time() * 1000 < tick_ms, "the process stopped after the tick, not before"
    assert shop.versions(tenant, customer, seq) == []

    shop.process.start()
    shop.served(tick_ms)
    (version,) = shop.versions(tenant, customer, seq)
    assert version["data"]["firstName"] == "Restarted"
    assert version["arrivedAt"] * 1000 >= tick_ms
