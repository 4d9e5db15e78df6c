"""Avro on the whole pipeline, against the stack's schema registry: a registry outage pauses the
router and loses nothing. (Unknown schema ids and undecodable Avro are in test_bad_events.py's
Avro pass; decoding equivalence with JSON in test_avro_equivalence.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from reach_devstack.stack import LocalStack, StackEndpoints

from consumer.config import SchemaRegistry
from consumer.router.avro import RegistrySchemas
from consumer.router.debezium import DecodeError
from consumer.router.formats import SourceDecoder
from consumer.router.loop import RouterStats
from tests.e2e.helpers import (
    Sandbox,
    caught_up,
    insert_customer,
    pipeline_thread,
    read_topic,
    sql,
    wait_for,
)

SCHEMA = "shop_customers"
# Long enough for several of the router's retries (its backoff starts at 0.5 s).
OUTAGE_S = 8.0


def test_a_registry_outage_pauses_the_router_and_loses_nothing(
    shop_local_stack: LocalStack, shop_stack: StackEndpoints, unique: Callable[[str], str]
) -> None:
    if shop_stack.source_format != "avro":
        pytest.skip("the schema registry is the Avro stack's")
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    customer, tenant = insert_customer(dsn, 2, f"outage-{uuid.uuid4().hex[:8]}@example.com")
    marker = uuid.uuid4().hex
    # The change is written by Debezium (its converter has the schema) before the outage...
    sql(dsn, ("UPDATE customers SET last_name = %s WHERE id = %s", (marker, customer)))
    time.sleep(2.0)
    shop_local_stack.stop_component("registry")
    try:
        # ...and read by a new pipeline that has never fetched a writer schema: it must wait.
        with pipeline_thread(shop_stack, unique("avro-outage")) as running:
            wait_for(
                lambda: (
                    running.stats.router is not None
                    and running.stats.router.registry_unavailable >= 2
                ),
                60,
                "the router to retry while the registry is down",
                guard=running.check_alive,
            )
            time.sleep(OUTAGE_S)
            router = running.stats.router
            assert router is not None
            assert router.dead_lettered == 0 and router.unknown_schema_ids == 0
            assert router.dirty_keys == 0, "nothing is routed without the writer schemas"
            shop_local_stack.start_component("registry")
            caught_up(
                running,
                lambda: (
                    (sandbox.current(tenant, SCHEMA, str(customer)) or {}).get("lastName") == marker
                ),
            )
            router = running.stats.router
            assert router is not None and router.dirty_keys > 0
            # Nothing was dead-lettered for the outage: whatever this pipeline dead-lettered
            # (other tests' bad events, read again from the start of the topics) is still
            # undecodable now that the registry answers.
            _assert_all_undecodable(shop_stack, running.definition.topics.dead_letter, router)
            running.check_alive()
    finally:
        if shop_local_stack.health().get("registry") != "running":
            shop_local_stack.start_component("registry")


def _assert_all_undecodable(endpoints: StackEndpoints, topic: str, router: RouterStats) -> None:
    if not router.dead_lettered:
        return
    letters = read_topic(
        endpoints.bootstrap_servers,
        topic,
        lambda messages: len(messages) >= router.dead_lettered,
        timeout_s=30,
    )
    registry = RegistrySchemas(
        SchemaRegistry.model_validate({"url": endpoints.schema_registry_url})
    )
    try:
        decoder = SourceDecoder("avro", registry)
        for letter in letters:
            with pytest.raises(DecodeError):
                decoder.decode(letter.key(), letter.value())
    finally:
        registry.close()
