"""5 % 5xx plus timeouts during a load run: everything lands, the sandbox equals the projection.

While the workload generator (reach_devstack/load.py, as in the demo) changes the shop at a modest
rate, the sandbox fails about 5 % of the requests with a 5xx (with and without Retry-After, and
some after applying the request, so that the answer is what gets lost), and about 2.5 % more
time out: a 504 after a hang, a connection cut mid-response, or a hang longer than reach-sync's
own timeout. Then the faults are removed, and reach-sync must converge with nothing
dead-lettered: retryable failures are retried, never given up on. For the whole test the sandbox
applies each tenant's queued batches in a shuffled order (Reach promises none across batches), so
a retry that leaves two unfinished batches of one entity can land the older state last.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reach_devstack.load import run_load
from reach_devstack.stack import StackEndpoints

from tests.e2e.helpers import Sandbox, assert_converged
from tests.e2e.pressure import (
    SandboxSwitches,
    dead_letter_count,
    definition_file,
    pipeline_from,
    requests_since,
)

# reach-sync's request timeout here (destination.timeout_s); one fault hangs twice as long.
TIMEOUT_S = 5.0
FAULTS = (
    {"kind": "error", "status": 503, "rate": 0.02, "retry_after_seconds": 1},
    {"kind": "error", "status": 500, "rate": 0.02},
    {"kind": "error", "status": 502, "rate": 0.01, "after_apply": True},
    {"kind": "timeout", "seconds": 1.0, "rate": 0.01},  # the sandbox answers 504
    {"kind": "timeout", "seconds": 0.2, "drop": True, "rate": 0.01},  # the connection is cut
    {"kind": "timeout", "seconds": 2 * TIMEOUT_S, "rate": 0.005},  # reach-sync gives up first
)
LOAD_RATE = 15.0  # operations per second (the demo's default is 40)
LOAD_SECONDS = 20.0
CONVERGE_S = 240.0
# Shuffled batch order: a fixed seed, to replay a failure; batches sent to a tenant within the
# gather time of each other (a resend after a lost answer or a failed status read) can overtake.
ORDER_SEED = 2718
GATHER_S = 0.25


@pytest.fixture
def shuffled(shop_stack: StackEndpoints) -> Iterator[dict[str, Any]]:
    with SandboxSwitches(shop_stack).shuffled(ORDER_SEED, GATHER_S) as order:
        yield order


def test_everything_lands_through_5xx_and_timeouts(
    shop_stack: StackEndpoints,
    unique: Callable[[str], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    shuffled: dict[str, Any],
) -> None:
    sandbox = Sandbox.of(shop_stack)
    switches = SandboxSwitches(shop_stack)
    name = unique("faulty")
    config = definition_file(tmp_path, name, {"timeout_s": TIMEOUT_S})
    caplog.set_level(logging.WARNING)

    first_seq = sandbox.last_request_seq()
    first_version = sandbox.last_version_seq()
    with sandbox.faults(*FAULTS):
        with pipeline_from(shop_stack, name, config) as running:
            load = run_load(
                shop_stack.postgres_dsn,
                rate=LOAD_RATE,
                seconds=LOAD_SECONDS,
                rng_seed=4,
                progress=False,
            )
            running.check_alive()
            fired = {_label(f["spec"]): f["fired"] for f in switches.faults()}
            faulty_until = sandbox.last_request_seq()
            # The faults end here; the pipeline runs on.
            sandbox.clear_faults()
            left = switches.faults()
            assert_converged(running.definition, shop_stack, CONVERGE_S)
            running.check_alive()
            counters = running.counters()
        dead = dead_letter_count(running.definition)

    reordered = sandbox.reordered(first_version)
    during = [r for r in requests_since(sandbox, first_seq) if r["seq"] <= faulty_until]
    statuses = Counter(r["status"] for r in during)
    unexpected = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage()]
    retried = Counter(
        _reason(r.getMessage()) for r in caplog.records if r.getMessage().startswith("window of")
    )
    report = (
        f"load: {load}; faults fired {fired}; {len(during)} requests while faulty"
        f" {dict(statuses)}; syncer {counters}; windows retried because {dict(retried)};"
        f" unexpected errors {len(unexpected)}; batch order {shuffled}: {reordered.batches}"
        f" batches overtaken by a later one; entities written out of arrival order:"
        f" {sorted(set(reordered.entities))}"
    )
    print(report)

    assert left == [], report
    assert load.commits > 0, report
    # The faults really happened: 5xx answers in the sandbox's log, failed windows retried.
    assert sum(n for status, n in statuses.items() if status >= 500) > 0, report
    assert fired["error 503"] > 0 and fired["error 500"] > 0, report
    assert fired["timeout 1.0s"] + fired["drop"] + fired[f"timeout {2 * TIMEOUT_S}s"] > 0, report
    assert counters["retries"] > 0, report
    # Nothing was given up on.
    assert (counters["dead_lettered"], dead) == (0, 0), report


def _label(spec: dict[str, object]) -> str:
    if spec["kind"] == "error":
        return f"error {spec['status']}"
    return "drop" if spec.get("drop") else f"timeout {spec['seconds']}s"


def _reason(message: str) -> str:
    """A retried window's reason, without what varies (paths, ids)."""
    for kind in ("answered 5", "timed out", "unreachable", "answered 429"):
        if kind in message:
            return kind
    return message
