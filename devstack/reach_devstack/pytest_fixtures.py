"""A pytest plugin: the real local servers, started once per session on free loopback ports.

reach-sync's tests and the local stack's own use the same servers; the repository's root
conftest.py registers this module with ``pytest_plugins = ["reach_devstack.pytest_fixtures"]``.
Fixtures: ``state_root``, ``unique``, ``broker``, ``redis_url``, ``postgres``, ``database``.

Tests isolate themselves by name (a fresh topic, group, database or Redis key prefix each) rather
than by restarting servers. Every server is a child of the test process with a parent-death
signal, so even a killed test run leaves nothing behind. Needs pytest, which the local stack
itself does not (the ``testing`` extra).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reach_devstack import broker as broker_component
from reach_devstack import postgres as pg_component
from reach_devstack import redis as redis_component
from reach_devstack.process import ManagedProcess, free_port, unprivileged_user, wait_until

__all__ = ["broker", "database", "postgres", "redis_url", "state_root", "unique"]

READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def state_root() -> Iterator[Path]:
    """A state directory that an unprivileged Postgres can traverse (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="reach-sync-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses: topics, consumer groups, databases, key prefixes."""

    def make(prefix: str) -> str:
        return f"{prefix}_{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture(scope="session")
def broker(state_root: Path) -> Iterator[str]:
    """Bootstrap servers of a real Tansu broker."""
    port = free_port()
    process = ManagedProcess(broker_component.broker_spec(port, state_root / "logs"))
    process.start()
    bootstrap = f"127.0.0.1:{port}"
    try:
        wait_until(process, lambda: broker_component.broker_ready(bootstrap), READY_TIMEOUT_S)
        yield bootstrap
    finally:
        process.stop()


@pytest.fixture(scope="session")
def redis_url(state_root: Path) -> Iterator[str]:
    """URL of a real redis-server without persistence."""
    port = free_port()
    process = ManagedProcess(
        redis_component.redis_spec(port, state_root / "redis", state_root / "logs")
    )
    process.start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(process, lambda: redis_component.redis_ready(url), READY_TIMEOUT_S)
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def postgres(state_root: Path) -> Iterator[pg_component.PostgresConfig]:
    """A real PostgreSQL cluster with wal_level=logical; use ``database`` for a fresh database."""
    config = pg_component.PostgresConfig(
        bin_dir=pg_component.find_postgres_bin(),
        data_dir=state_root / "postgres" / "data",
        port=free_port(),
        user="reach",
        password=uuid.uuid4().hex,
        database="postgres",
    )
    run_as = unprivileged_user()
    pg_component.init_cluster(config, run_as, state_root / "logs" / "postgres.log")
    process = ManagedProcess(pg_component.postgres_spec(config, run_as, state_root / "logs"))
    process.start()
    try:
        wait_until(process, lambda: pg_component.postgres_ready(config), READY_TIMEOUT_S)
        yield config
    finally:
        process.stop()


@pytest.fixture
def database(
    postgres: pg_component.PostgresConfig, unique: Callable[[str], str]
) -> Iterator[pg_component.PostgresConfig]:
    """A fresh database in the session cluster, dropped afterwards (with its replication slots)."""
    name = unique("db")
    config = pg_component.PostgresConfig(
        bin_dir=postgres.bin_dir,
        data_dir=postgres.data_dir,
        port=postgres.port,
        user=postgres.user,
        password=postgres.password,
        database=name,
    )
    pg_component.create_database(config)
    yield config
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
