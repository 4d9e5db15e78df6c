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


def test_no_process_loads_pyjwt_or_cryptographys_native_modules() -> None:
    # Partner tokens are signed with the standard library (consumer/reach/auth.py): PyJWT
    # would load cryptography's native modules, 9 MiB of every process.
    syncer_start = ROUTER_START.replace(
        "import consumer.service", "import consumer.service\nimport consumer.syncer.process"
    )
    loaded = _imported(syncer_start)
    assert "consumer.reach.auth" in loaded
    assert sorted(m for m in loaded if m == "jwt" or m.startswith("cryptography.hazmat")) == []


def test_a_process_that_runs_the_syncer_imports_them_with_its_process_parts() -> None:
    # So the test above is not passing on names that are never imported at all.
    syncer_start = ROUTER_START.replace(
        "import consumer.service", "import consumer.service\nimport consumer.syncer.process"
    )
    loaded = _imported(syncer_start)
    # The metered transport comes with the Reach client only when metrics are on.
    assert set(SYNCER_ONLY) - {"consumer.observe.metered_transport", "aiohttp"} <= loaded


# A router whose definition names a schema registry under `format: auto` (as examples/shop.yaml
# does), fed JSON events and then one Avro event.
REGISTRY_ON_DEMAND = """
import json, sys
from consumer.config import KafkaSource
from consumer.errors import Retryable
from consumer.router.formats import SourceDecoder

kafka = KafkaSource.model_validate({
    "bootstrap_servers": "127.0.0.1:9", "group_id": "g", "topics": ["t"], "format": "auto",
    "schema_registry": {"url": "http://127.0.0.1:9", "timeout_s": 1},
})
decoder = SourceDecoder.for_source(kafka)
decoder.decode(b'{"id": 1}', b'{"op": "u", "source": {"schema": "public", "table": "t"},'
               b' "before": null, "after": {"id": 1}}', "t")
seen = {"after_json": "confluent_kafka.schema_registry" in sys.modules}
try:
    decoder.decode(b"\\x00\\x00\\x00\\x00\\x01\\x02", b"\\x00\\x00\\x00\\x00\\x02\\x02", "t")
except Retryable:  # nothing answers on port 9: the registry is unavailable, as it should be
    pass
seen["after_avro"] = "confluent_kafka.schema_registry" in sys.modules
decoder.close()
print(json.dumps(seen))
"""


def test_a_router_of_json_events_makes_no_schema_registry_client_until_an_avro_event() -> None:
    # The client and what it imports are about 16 MiB of a router's memory (docs/benchmarks.md).
    done = subprocess.run(
        [sys.executable, "-c", REGISTRY_ON_DEMAND],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout) == {"after_json": False, "after_avro": True}
