"""A tenant whose access Reach revoked (a 403 for every request of it): the other tenants keep
flowing; nothing of it is sent, dead-lettered or committed past; once access is restored, the
next probe finds it accepted and it catches up.

The sandbox's error fault answers 403 for ``merchant-2``'s API requests, as Reach does for a
tenant the credential may not reach (docs/reach-api.md §7 Q3, Q4). Probes are made frequent through
the definition (``destination.tenant_probe``), not by changing the defaults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition
from reach_devstack.stack import StackEndpoints
from reach_devstack.verify import verify_sandbox

from consumer.config import SyncDefinition
from consumer.records.dlq_read import Filter, read_dead_letters
from consumer.router.dirty import dirty_message_key
from tests.e2e.conftest import TENANTS
from tests.e2e.helpers import (
    Sandbox,
    assert_converged,
    insert_customer,
    insert_transaction,
    read_topic,
    wait_for,
)
from tests.e2e.pressure import by_tenant, definition_file, pipeline_from, requests_since

REFUSED, REFUSED_REACH_ID, REFUSED_MERCHANT = "merchant-2", "tenant-2", 2
FLOWING_MERCHANTS = {1: "merchant-1", 3: "merchant-3"}
REVOKED = {
    "kind": "error",
    "status": 403,
    "tenant": REFUSED,
    "path_prefix": "/api/",
    "message": "tenant access revoked",
}
PROBE = {"tenant_probe": {"interval_s": 1.0, "max_interval_s": 2.0}}
WAIT_S = 120.0


def _first_offsets(bootstrap: str, definition: SyncDefinition, keys: set[bytes]) -> dict[int, int]:
    """Per dirty-topic partition, the lowest offset of a message keyed by one of ``keys``."""

    def found(messages: list[Message]) -> set[bytes]:
        return {m.key() for m in messages} & keys

    messages = read_topic(
        bootstrap, definition.topics.dirty, lambda m: found(m) == keys, timeout_s=60
    )
    first: dict[int, int] = {}
    for message in messages:
        if message.key() in keys:
            partition, offset = message.partition() or 0, message.offset() or 0
            first[partition] = min(offset, first.get(partition, offset))
    return first


def _committed(bootstrap: str, definition: SyncDefinition) -> dict[int, int]:
    """The syncer group's committed offset per dirty-topic partition (-1: none yet). Asking
    joins no group, so the running syncer is not disturbed."""
    group = f"{definition.source.kafka.group_id}.syncer"
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        topic = definition.topics.dirty
        partitions = [TopicPartition(topic, p) for p in range(definition.topics.dirty_partitions)]
        return {tp.partition: tp.offset for tp in reader.committed(partitions, timeout=10)}
    finally:
        reader.close()


def _dead_letters_of_refused(definition: SyncDefinition) -> int:
    """Dead letters naming the refused tenant (the topic also holds other tests' bad events,
    which a new pipeline's router reads again from the start)."""
    return read_dead_letters(definition, Filter(tenant=REFUSED)).matched


def _only_refused_differ(definition: SyncDefinition, endpoints: StackEndpoints) -> bool:
    differences = asyncio.run(
        verify_sandbox(definition, endpoints.sandbox_url, endpoints.sandbox_admin_token, TENANTS)
    )
    keys = [k for d in differences for k in (*d.missing, *d.extra, *d.different)]
    return bool(keys) and all(tenant == REFUSED for tenant, _ in keys)


def test_a_refused_tenant_is_held_while_the_others_flow(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    dsn, bootstrap = shop_stack.postgres_dsn, shop_stack.bootstrap_servers
    sandbox = Sandbox.of(shop_stack)
    name = unique("refused")
    with pipeline_from(shop_stack, name, definition_file(tmp_path, name, PROBE)) as running:
        syncer = running.stats.syncer
        # The whole shop first (the snapshot): every tenant flows, and the pipeline is idle.
        assert_converged(running.definition, shop_stack)
        dead_before = syncer.dead_lettered

        with sandbox.faults(REVOKED):
            held = [
                insert_customer(dsn, REFUSED_MERCHANT, f"held-{n}-{name}@example.com")[0]
                for n in range(3)
            ]
            sale = insert_transaction(dsn, held[0], 250_000, "completed")
            flowing = [
                insert_customer(dsn, merchant, f"flowing-{merchant}-{name}@example.com")
                for merchant in FLOWING_MERCHANTS
            ]

            wait_for(
                lambda: all(sandbox.current(t, "shop_customers", str(i)) for i, t in flowing),
                WAIT_S,
                "the other tenants' new customers in the sandbox",
                guard=running.check_alive,
            )
            wait_for(
                lambda: syncer.blocked_tenants == 1 and syncer.held >= len(held) + 1,
                WAIT_S,
                f"{REFUSED} blocked and its changes held",
                guard=running.check_alive,
            )
            blocked_at, seq = time.monotonic(), sandbox.last_request_seq()

            # Nothing of the refused tenant reached Reach, and everything else did.
            assert all(sandbox.current(REFUSED, "shop_customers", str(i)) is None for i in held)
            assert sandbox.current(REFUSED, "shop_transactions", str(sale)) is None
            assert _only_refused_differ(running.definition, shop_stack)
            # Nothing of it was dead-lettered.
            assert _dead_letters_of_refused(running.definition) == 0
            assert syncer.dead_lettered == dead_before
            # No commit passed an offset that carried a held entity: a restart reads them again.
            keys = {dirty_message_key("customers", i) for i in held}
            keys.add(dirty_message_key("transactions", sale))
            held_at = _first_offsets(bootstrap, running.definition, keys)
            committed = _committed(bootstrap, running.definition)
            assert all(committed[p] <= offset for p, offset in held_at.items()), (
                held_at,
                committed,
            )
            # Meanwhile Reach heard from it only the probes: one at a time, a second apart or more.
            probes = by_tenant(requests_since(sandbox, seq)).get(REFUSED_REACH_ID, [])
            assert len(probes) <= time.monotonic() - blocked_at + 2, probes
            assert syncer.blocked_tenants == 1

        # Access restored: the next probe is accepted and the held changes land.
        wait_for(
            lambda: syncer.blocked_tenants == 0 and syncer.held == 0,
            WAIT_S,
            f"{REFUSED} unblocked and nothing held",
            guard=running.check_alive,
        )
        assert_converged(running.definition, shop_stack)
        assert sandbox.current(REFUSED, "shop_transactions", str(sale)) is not None
        wait_for(
            lambda: all(
                _committed(bootstrap, running.definition)[p] > offset
                for p, offset in held_at.items()
            ),
            WAIT_S,
            "the commits past the held entities",
            guard=running.check_alive,
        )
        assert _dead_letters_of_refused(running.definition) == 0
        assert syncer.dead_lettered == dead_before
