"""``reach-sync dev up --format avro`` through the real command: the registry is a component of
the stack, its URL is in ``--json``, ``dev status`` and ``dev env``, and ``dev restart
registry`` brings it back on the same port with the ids it had issued."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

KEY = json.dumps({"type": "record", "name": "Key", "fields": [{"name": "id", "type": "long"}]})
CONTENT_TYPE = {"Content-Type": "application/vnd.schemaregistry.v1+json"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_an_avro_stack_runs_a_registry_that_keeps_its_ids_across_a_restart(
    state_root: Path,
) -> None:
    where = ("--state-dir", str(state_root / "dev-avro"))
    # Without Debezium: the registry and the CLI plumbing are what is tested here (Debezium's
    # Avro is test_debezium_avro.py's), and the servers alone start in about a second.
    up = _cli("dev", "up", *where, "--json", "--format", "avro", "--no-debezium")
    assert up.returncode == 0, up.stderr
    endpoints: dict[str, Any] = json.loads(up.stdout.strip().splitlines()[-1])
    try:
        url = endpoints["schema_registry_url"]
        assert endpoints["source_format"] == "avro"
        assert url.startswith("http://127.0.0.1:")
        assert "registry" in endpoints["pids"]
        registered = httpx.post(
            f"{url}/subjects/t-key/versions", json={"schema": KEY}, headers=CONTENT_TYPE
        )
        assert registered.json() == {"id": 1}

        env = _cli("dev", "env", *where)
        assert env.returncode == 0, env.stderr
        assert f"export REACH_SYNC_SCHEMA_REGISTRY_URL={url}" in env.stdout.splitlines()
        assert "export REACH_SYNC_SOURCE_FORMAT=avro" in env.stdout.splitlines()

        restarted = _cli("dev", "restart", "registry", *where)
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.startswith("restarted registry in ")
        assert httpx.get(f"{url}/schemas/ids/1").json() == {"schema": KEY.replace(" ", "")}

        stopped = _cli("dev", "stop", "registry", *where)
        assert stopped.returncode == 0, stopped.stderr
        status = _cli("dev", "status", *where)
        assert "  registry   stopped\n" in status.stdout
        assert f"format: avro; schema registry at {url}\n" in status.stdout
        assert _cli("dev", "start", "registry", *where).returncode == 0
        state = json.loads(_cli("dev", "status", *where, "--json").stdout)
        assert (state["status"], state["components"]["registry"]) == ("ready", "running")
    finally:
        assert _cli("dev", "down", *where).returncode == 0
