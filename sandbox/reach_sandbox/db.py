"""The SQLite file and the one thread that touches it.

A resource's data is stored once, in its newest row of ``versions`` (the history tests read);
``resources`` holds the current row of each resource as a pointer (``seq``) to that version.
Writing each state once instead of twice halves the bytes a batch writes.

Every read and write runs on a single dedicated thread with a single connection: SQLite allows
one writer anyway, the event loop never blocks on disk, and no two transactions interleave, so
"one transaction per batch" and "last write wins in arrival order" need no locks.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

__all__ = ["Database", "placeholders", "transaction"]

P = ParamSpec("P")
T = TypeVar("T")

# Large enough for a few thousand resources' pages; the file is a test fixture, not a warehouse.
_CACHE_KIB = 65536
# WAL pages between automatic checkpoints: about 64 MiB, a few hundred batches of 1000.
_CHECKPOINT_PAGES = 16384

_DDL = """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, partner_id TEXT NOT NULL, external_id TEXT NOT NULL,
    doc BLOB NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (partner_id, external_id));
CREATE TABLE IF NOT EXISTS schemas (
    id TEXT PRIMARY KEY, partner_id TEXT NOT NULL, name_lower TEXT NOT NULL,
    doc BLOB NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (partner_id, name_lower));
CREATE TABLE IF NOT EXISTS mappings (
    partner_id TEXT PRIMARY KEY, doc BLOB NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    tenant_id TEXT NOT NULL, schema_id TEXT NOT NULL, external_id TEXT NOT NULL,
    id TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, schema_id, external_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, schema_id TEXT NOT NULL,
    external_id TEXT NOT NULL, op TEXT NOT NULL, data BLOB, arrived_at REAL NOT NULL,
    applied_at REAL NOT NULL, batch_id TEXT, request_id TEXT);
CREATE INDEX IF NOT EXISTS versions_entity ON versions (external_id);
CREATE TABLE IF NOT EXISTS refs (
    tenant_id TEXT NOT NULL, src_schema TEXT NOT NULL, src_ext TEXT NOT NULL, field TEXT NOT NULL,
    dst_schema TEXT NOT NULL, dst_ext TEXT NOT NULL,
    PRIMARY KEY (tenant_id, src_schema, src_ext, field)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_dst ON refs (tenant_id, dst_schema, dst_ext);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant_id TEXT NOT NULL,
    schema_id TEXT NOT NULL, batch_type TEXT NOT NULL, status TEXT NOT NULL,
    options BLOB NOT NULL, total INTEGER NOT NULL,
    processed INTEGER NOT NULL DEFAULT 0, successful INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, pending INTEGER NOT NULL DEFAULT 0, errors BLOB,
    created_at REAL NOT NULL, started_at REAL, completed_at REAL, request_id TEXT,
    idempotency_key TEXT, UNIQUE (tenant_id, idempotency_key));
CREATE INDEX IF NOT EXISTS batches_tenant ON batches (tenant_id, seq);
CREATE TABLE IF NOT EXISTS pending (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, schema_id TEXT NOT NULL,
    external_id TEXT NOT NULL, batch_id TEXT NOT NULL, record_index INTEGER NOT NULL,
    kind TEXT NOT NULL, onconflict TEXT NOT NULL, data BLOB NOT NULL, missing BLOB NOT NULL,
    arrived_at REAL NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    request_id TEXT);
CREATE INDEX IF NOT EXISTS pending_entity ON pending (tenant_id, schema_id, external_id);
CREATE INDEX IF NOT EXISTS pending_expiry ON pending (expires_at);
CREATE INDEX IF NOT EXISTS pending_batch ON pending (batch_id);
CREATE TABLE IF NOT EXISTS pending_deps (
    pending_id TEXT NOT NULL, tenant_id TEXT NOT NULL, dst_schema TEXT NOT NULL,
    dst_ext TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pending_deps_dst ON pending_deps (tenant_id, dst_schema, dst_ext);
CREATE INDEX IF NOT EXISTS pending_deps_id ON pending_deps (pending_id);
CREATE TABLE IF NOT EXISTS request_log (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    tenant_id TEXT, status INTEGER NOT NULL, records INTEGER, duration_ms REAL NOT NULL,
    request_id TEXT NOT NULL, credential TEXT);
"""

# Everything a reset empties; tenants and schemas are re-seeded from the config afterwards.
RESET_TABLES = (
    "tenants",
    "schemas",
    "mappings",
    "resources",
    "versions",
    "refs",
    "batches",
    "pending",
    "pending_deps",
    "request_log",
)


def placeholders(count: int) -> str:
    """``?,?,?`` for an IN list of ``count`` values."""
    return ",".join("?" * count)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception: nothing is ever half-applied."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=NORMAL survives a process crash; only an OS crash may lose the tail.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    conn.execute("PRAGMA temp_store=MEMORY")
    # A batch writes a few hundred pages; checkpointing every 1000 (the default) would copy
    # and fsync the database every few batches.
    conn.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
    conn.executescript(_DDL)
    return conn


class Database:
    """Runs functions of the connection on the database thread; ``open`` before use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-db")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, _connect, self.path)
        return self._conn

    async def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        if self._conn is None:
            raise RuntimeError("database is not open")
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, self._conn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def submit(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> asyncio.Future[T]:
        """Queue a call without waiting for it; calls run in submission order."""
        if self._conn is None:
            raise RuntimeError("database is not open")
        call = functools.partial(fn, self._conn, *args, **kwargs)
        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, _checkpoint_and_close, conn)
        self._executor.shutdown(wait=True)


def _checkpoint_and_close(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
