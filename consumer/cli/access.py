"""``reach-sync db-access plan | apply | drop``: the guide's "Database access" method.

Reach polls read-only views instead of receiving records (consumer/access/views.py). ``plan``
prints the SQL ``apply`` would run now, which runs it in one transaction; ``drop`` removes it.
They connect with ``source.database`` unless ``--dsn-env`` names another DSN: the definition's
is often a read replica, where nothing can be created. Exit codes: 0 done; 1 the database
unreachable (try again); 2 a configuration error or a refusal (a person must fix something).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from consumer.access.views import (
    DEFAULT_ROLE,
    DEFAULT_SCHEMA,
    AccessOptions,
    AccessPlan,
    apply_access,
    check_name,
    connect,
    drop_access,
    planned,
    script,
)
from consumer.cli.common import EXIT_CONFIG, add_definition, definition_path, failed, load
from consumer.config import SyncDefinition
from consumer.errors import ConfigurationError, SyncError

__all__ = ["add_access_commands"]

_T = TypeVar("_T")

# What plan prints for the password: apply sends its verifier, never the password itself.
_STANDS_FOR_IT = "'<the password from --password-env, as its verifier>'"
HELP = "read-only views of what the API would send, for Reach to poll (the guide's database access)"


def add_access_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    access = sub.add_parser("db-access", help=HELP, description=HELP)
    actions = access.add_subparsers(dest="action", required=True)
    plan = actions.add_parser("plan", help="print the SQL apply would run now; change nothing")
    apply = actions.add_parser(
        "apply", help="create or replace the schema, views and role in one transaction"
    )
    drop = actions.add_parser("drop", help="drop the role's views, the schema if empty, the role")
    for parser in (plan, apply, drop):
        add_definition(parser)
        parser.add_argument(
            "--schema",
            type=_schema,
            default=DEFAULT_SCHEMA,
            help=f"the views' schema, one of their own ({DEFAULT_SCHEMA})",
        )
        parser.add_argument(
            "--role", type=_role, default=DEFAULT_ROLE, help=f"the reading role ({DEFAULT_ROLE})"
        )
        parser.add_argument(
            "--dsn-env",
            metavar="VAR",
            help="connect with the DSN in this environment variable (the primary, as a user "
            "that may create roles and read the tables) instead of source.database",
        )
    for parser in (plan, apply):
        parser.add_argument(
            "--tenant",
            action="append",
            default=[],
            help="a view per resource for this tenant (repeat; default: each tenants_query)",
        )
        parser.add_argument(
            "--connection-limit",
            type=_limit,
            metavar="N",
            help="at most N connections of the role at once",
        )
    apply.add_argument(
        "--password-env",
        metavar="VAR",
        help="the role's password is in this environment variable (required; a new one rotates)",
    )
    plan.set_defaults(handler=_plan)
    apply.set_defaults(handler=_apply)
    drop.set_defaults(handler=_drop)


def _schema(text: str) -> str:
    try:
        return check_name("schema", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _role(text: str) -> str:
    try:
        return check_name("role", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of connections (1 to 10000)")
    return int(text)


def _options(args: argparse.Namespace) -> AccessOptions:
    return AccessOptions(
        schema=args.schema,
        role=args.role,
        tenants=tuple(getattr(args, "tenant", ())),
        connection_limit=getattr(args, "connection_limit", None),
    )


def _env(option: str, var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise ConfigurationError(f"{option} {var}: the environment variable is not set or empty")
    return value


def _session(
    definition: SyncDefinition,
    args: argparse.Namespace,
    body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]],
) -> _T:
    """Connect (``--dsn-env`` or source.database), run ``body``, close."""
    if args.dsn_env:
        dsn = _env("--dsn-env", args.dsn_env)
    else:
        dsn = definition.source.database.dsn.get_secret_value()

    async def main() -> _T:
        conn = await connect(dsn, definition.source.database.statement_timeout_ms)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def _notes(plan: AccessPlan) -> list[str]:
    if not plan.notes:
        return ["every view column is what the API sends"]
    return ["not exactly what the API sends:", *(f"  {note}" for note in plan.notes)]


def _plan(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    options = _options(args)

    async def body(conn: psycopg.AsyncConnection[Any]) -> str:
        plan = await planned(conn, definition, options)
        role = "exists: its password is set again" if plan.role_exists else "is created"
        header = [
            f"db-access plan: {len(plan.views)} views in schema {options.schema}; role "
            f"{options.role} {role}",
            *_notes(plan),
        ]
        comments = "".join(f"-- {line}\n" for line in header)
        return comments + script(plan, conn, _STANDS_FOR_IT)

    try:
        print(_session(definition, args, body), end="")
    except SyncError as exc:
        return failed("db-access plan", exc)
    return 0


def _apply(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    if not args.password_env:
        print("db-access apply: needs --password-env VAR (the role's password)", file=sys.stderr)
        return EXIT_CONFIG
    options = _options(args)
    try:
        password = _env("--password-env", args.password_env)
        plan = _session(
            definition, args, lambda conn: apply_access(conn, definition, options, password)
        )
    except SyncError as exc:
        return failed("db-access apply", exc)
    role = "password set again" if plan.role_exists else "created"
    print(f"applied in one transaction: schema {options.schema}, role {options.role} ({role})")
    for view in plan.views:
        print(f"  {options.schema}.{view.name}: {view.resource}, tenant {view.tenant}")
    print("\n".join(_notes(plan)))
    return 0


def _drop(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    options = _options(args)
    try:
        dropped = _session(definition, args, lambda conn: drop_access(conn, options))
    except SyncError as exc:
        return failed("db-access drop", exc)
    print("\n".join(f"{s};" for s in dropped.statements) or "nothing to drop")
    for kept in dropped.kept:
        print(f"kept {kept}")
    return 0
