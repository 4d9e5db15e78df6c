"""The whole pipeline on the real stack: Postgres, Debezium, broker, reach-sync, sandbox."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from reach_devstack.demo import demo_env
from reach_devstack.stack import DEV_TENANTS, LocalStack, StackEndpoints, StackOptions

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.service import ServiceStats, run_service

EXAMPLE = Path(__file__).parents[2] / "examples" / "shop.yaml"
TENANTS = [external for _, external in DEV_TENANTS]
STOP_BOUND_S = 90.0


# The whole e2e suite runs once per format Debezium can write: Kafka Connect's JSON, and Avro
# in the Confluent wire format with the stack's schema registry (docs/avro.md). One stack at a
# time: pytest groups the tests by format. REACH_SYNC_E2E_FORMATS=json runs one pass only.
E2E_FORMATS = [f for f in os.environ.get("REACH_SYNC_E2E_FORMATS", "json,avro").split(",") if f]


@pytest.fixture(scope="session", params=E2E_FORMATS)
def shop_local_stack(request: pytest.FixtureRequest, state_root: Path) -> Iterator[LocalStack]:
    """The local stack of the shop, in one of the formats; tests that stop a component (the
    schema registry) use it, the others its endpoints (``shop_stack``)."""
    source_format = str(request.param)
    stack = LocalStack(
        StackOptions(
            state_dir=state_root / f"e2e-stack-{source_format}",
            seed_customers=60,
            seed_transactions=150,
            format=source_format,
        )
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def shop_stack(shop_local_stack: LocalStack) -> StackEndpoints:
    endpoints = shop_local_stack.endpoints
    assert endpoints is not None
    return endpoints


def shop_env(endpoints: StackEndpoints, name: str) -> dict[str, str]:
    """The demo's environment for examples/shop.yaml, isolated by ``name``."""
    return {
        **demo_env(endpoints, group=name),
        "REACH_SYNC_REDIS_PREFIX": f"reach-sync:{name}",
        "REACH_SYNC_DIRTY_TOPIC": f"{name}.dirty",
        "REACH_SYNC_DEAD_LETTER_TOPIC": f"{name}.dead-letter",
        "REACH_SYNC_AUDIT_TOPIC": f"{name}.audit",
    }


@dataclass
class RunningPipeline:
    definition: SyncDefinition
    stop: threading.Event
    thread: threading.Thread
    stats: ServiceStats


@pytest.fixture
def pipeline(
    shop_stack: StackEndpoints, unique: Callable[[str], str]
) -> Iterator[Callable[..., AbstractContextManager[RunningPipeline]]]:
    """Start reach-sync (both stages) in a thread; stopped and joined when the block ends.

    A name runs once per test process: on the local broker the stopped pipeline's consumers are
    released without a LeaveGroup and stay alive (heartbeating) until the process ends, so the
    same group would never be rebalanced to a second pipeline here. Restart tests use a separate
    process (helpers.PipelineProcess).
    """

    @contextmanager
    def start(name: str | None = None) -> Iterator[RunningPipeline]:
        definition = load_definition(EXAMPLE, shop_env(shop_stack, name or unique("e2e")))
        stop = threading.Event()
        stats = ServiceStats()
        thread = threading.Thread(
            target=run_service,
            args=(definition, stop),
            kwargs={"stats": stats},
            name="pipeline",
            daemon=True,
        )
        thread.start()
        try:
            yield RunningPipeline(definition, stop, thread, stats)
        finally:
            stop.set()
            thread.join(STOP_BOUND_S)
            assert not thread.is_alive(), "the pipeline did not stop within its bound"

    yield start
