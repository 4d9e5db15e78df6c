"""A Confluent Schema Registry double for the local stack: the REST API that Avro clients use.

No schema registry server can be installed from packages here, so the stack runs this one when
it is started with ``--format avro``: Debezium's ``AvroConverter`` registers its schemas in it,
and reach-sync's ``SchemaRegistryClient`` fetches them by id. ``store.py`` holds the rules,
``app.py`` the HTTP API, ``server.py`` the process (``python -m reach_devstack.registry``).

This module is what the stack needs to launch and probe it, without importing Starlette.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from reach_devstack.process import ProcessSpec

__all__ = ["NAME", "STATE_FILE", "registry_ready", "registry_spec"]

NAME = "registry"
# The schemas, subjects and compatibility settings, in the registry's state directory.
STATE_FILE = "schemas.json"


def registry_spec(port: int, state_dir: Path, log_dir: Path) -> ProcessSpec:
    """The registry on loopback ``port``, keeping its schemas in ``state_dir``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return ProcessSpec(
        name=NAME,
        argv=[
            sys.executable,
            "-m",
            "reach_devstack.registry",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
        ],
        log_path=log_dir / f"{NAME}.log",
    )


def registry_ready(url: str) -> bool:
    """The registry answers its health check."""
    try:
        return httpx.get(f"{url}/_admin/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
