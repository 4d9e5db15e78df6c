"""A process imports what its role runs: `reach-sync run --role router` never loads the syncer's
machinery (its loop, window sinks, scheduler, Reach rate limiter and circuit breaker), which
consumer/service.py imports only for a role that runs the syncer (consumer/syncer/process.py)."""

from __future__ import annotations

import json
import subprocess
import sys

# What only a process that runs the syncer needs.
SYNCER_ONLY = (
    "consumer.syncer.process",
    "consumer.syncer.loop",
    "consumer.syncer.window_sink",
    "consumer.schedule.scheduler",
    "consumer.reach.limits",
    "consumer.reach.breaker",
    "consumer.observe.metered_transport",
    "consumer.reach.client",
    "httpx",
    "aiohttp",
)

# What `run --role router` imports before run_service starts: the entry point, then what _run
# (consumer/cli/commands.py) imports when it runs.
ROUTER_START = """
import json, sys
import consumer.cli.main
import consumer.observe.telemetry
import consumer.service
print(json.dumps(sorted(sys.modules)))
"""


def _imported(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``code`` (this process's own are not it)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(done.stdout))


def test_a_router_only_process_does_not_import_the_syncer() -> None:
    loaded = _imported(ROUTER_START)
    assert "consumer.router.loop" in loaded  # what it runs is there
    assert "consumer.backfill.resync" in loaded
    assert sorted(loaded.intersection(SYNCER_ONLY)) == []


def test_a_process_that_runs_the_syncer_imports_them_with_its_process_parts() -> None:
    # So the test above is not passing on names that are never imported at all.
    syncer_start = ROUTER_START.replace(
        "import consumer.service", "import consumer.service\nimport consumer.syncer.process"
    )
    loaded = _imported(syncer_start)
    # The metered transport comes with the Reach client only when metrics are on.
    assert set(SYNCER_ONLY) - {"consumer.observe.metered_transport", "aiohttp"} <= loaded
