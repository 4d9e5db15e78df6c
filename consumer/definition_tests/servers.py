"""The throwaway servers of a test run, from the local stack: Postgres (empty, then the
partner's schema), Redis and the Reach sandbox holding the partner's Reach schemas; with the
broker too for ``--e2e``. Each case gets a database of its own, copied from the schema's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from consumer.definition_tests.cases import Suite
from consumer.definition_tests.target import Endpoints
from consumer.errors import ConfigurationError

__all__ = ["Servers", "throwaway_servers"]

# pg_dump (17.6 and later) fences its output with these psql commands; they mean nothing here.
_DUMP_FENCES = ("\\restrict", "\\unrestrict")


@dataclass(frozen=True, slots=True)
class Servers:
    template_dsn: str
    redis_url: str
    reach_url: str
    admin_token: str
    partner_id: str
    partner_secret: str
    bootstrap_servers: str

    def endpoints(self, database_dsn: str, key_prefix: str) -> Endpoints:
        """These servers as a definition needs them, on ``database_dsn`` and under a Redis key
        prefix of its own."""
        return Endpoints(
            database_dsn=database_dsn,
            redis_url=self.redis_url,
            reach_url=self.reach_url,
            partner_id=self.partner_id,
            partner_secret=self.partner_secret,
            key_prefix=key_prefix,
            bootstrap_servers=self.bootstrap_servers,
        )

    def new_database(self, name: str) -> str:
        """A database copied from the schema's, for one case; its DSN."""
        with psycopg.connect(self.template_dsn, autocommit=True) as conn:
            template = conn.info.dbname
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (template,),
            )
        admin = conninfo.make_conninfo(self.template_dsn, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return conninfo.make_conninfo(self.template_dsn, dbname=name)


def _schema_sql(path: Path) -> str:
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(_DUMP_FENCES):
            continue
        if line.startswith("\\"):
            raise ConfigurationError(
                f"{path}:{number}: a psql command ({line.split()[0]}) cannot run here: "
                "give plain SQL (pg_dump --schema-only --no-owner writes it)"
            )
        lines.append(line)
    return "\n".join(lines)


def load_schema(dsn: str, files: tuple[Path, ...]) -> None:
    with psycopg.connect(dsn) as conn:
        for path in files:
            try:
                conn.execute(_schema_sql(path).encode())
            except psycopg.Error as exc:
                raise ConfigurationError(
                    f"{path}: the schema does not load: {(exc.diag.message_primary or exc)}"
                ) from exc


@contextmanager
def throwaway_servers(suite: Suite, state_dir: Path, *, broker: bool = False) -> Iterator[Servers]:
    from reach_devstack.stack import LocalStack, StackOptions

    options = StackOptions(
        state_dir=state_dir,
        with_broker=broker,
        with_debezium=False,
        seed_shop=False,
        reach_schemas=suite.reach_schemas,
        tenants=tuple((f"tenant-{t}", t) for t in suite.tenants or ()),
    )
    with LocalStack(options) as stack:
        endpoints = stack.endpoints
        assert endpoints is not None  # started by the with
        load_schema(endpoints.postgres_dsn, suite.schema_files)
        yield Servers(
            template_dsn=endpoints.postgres_dsn,
            redis_url=endpoints.redis_url,
            reach_url=endpoints.sandbox_url,
            admin_token=endpoints.sandbox_admin_token,
            partner_id=endpoints.reach_partner_id,
            partner_secret=endpoints.reach_jwt_secret,
            bootstrap_servers=endpoints.bootstrap_servers,
        )
